//! The engine phase's other clients: users who upload their fixes in batches over HTTP
//! (`POST /v1/fixes`, the binary body, each user's own location token as bearer) through a few
//! keep-alive connections, as phones recording in the background do through a load balancer
//! or a gateway that pools its upstream connections. They carry load past the sockets one
//! process may hold (a stream is a socket a user, at both ends), in groups of their own. Every
//! answer says how many of the batch's fixes the engine took, and, coming after the hub took
//! them, proves it did: the last answer to a batch sent in the window marks this side caught
//! up, as the streams' final pongs do theirs.

use super::streams::{Schedule, unix_ms};
use super::world::Walker;
use crate::measure::{micros_histogram, record};
use hdrhistogram::Histogram;
use protocol::location::{BINARY_MEDIA_TYPE, BatchResult, encode_fixes};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Reasons of failed uploads kept for the report.
const KEEP_REASONS: usize = 8;
/// How long one upload may take: guards against a hang, not part of any measurement.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What the uploads counted. One thread: cells, no locks.
#[derive(Debug)]
pub struct Counts {
    pub measure_from: Cell<Option<Instant>>,
    pub sent: Cell<u64>,
    /// Fixes in batches sent inside the measurement window.
    pub sent_measured: Cell<u64>,
    pub requests_measured: Cell<u64>,
    /// Fixes of batches not sent, the dispatcher being more than a batch's period late.
    pub skipped: Cell<u64>,
    pub failed_requests: Cell<u64>,
    pub reasons: RefCell<Vec<String>>,
    /// When the last answer to a batch sent in the window came.
    pub last_answer: Cell<Option<Instant>>,
    /// Send → answer, per batch sent in the window, µs.
    pub latency: RefCell<Histogram<u64>>,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            measure_from: Cell::new(None),
            sent: Cell::new(0),
            sent_measured: Cell::new(0),
            requests_measured: Cell::new(0),
            skipped: Cell::new(0),
            failed_requests: Cell::new(0),
            reasons: RefCell::new(Vec::new()),
            last_answer: Cell::new(None),
            latency: RefCell::new(micros_histogram()),
        }
    }
}

impl Counts {
    fn bump(c: &Cell<u64>, by: u64) {
        c.set(c.get() + by);
    }

    fn keep(&self, reason: impl FnOnce() -> String) {
        let mut list = self.reasons.borrow_mut();
        if list.len() < KEEP_REASONS {
            list.push(reason());
        }
    }
}

/// The uploading users and where they upload.
pub struct Plan {
    /// `http://HOST:PORT/v1/fixes`.
    pub url: String,
    pub walkers: Vec<Walker>,
    /// `Bearer <token>`, a user each.
    pub auth: Vec<HeaderValue>,
    /// Requests in flight at most: the keep-alive connections.
    pub connections: usize,
}

/// Sends every user's batches on `schedule` (user `i` at `start + phase(i) + k · frame period`,
/// `per_frame` fixes a batch taken a period apart, the last one now) until its end, then
/// resolves once every answer is in. A batch more than a frame period late is not sent (counted
/// as skipped), as the streams' writers do.
pub async fn run(counts: Rc<Counts>, plan: Plan, schedule: Schedule) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.connections)
        .tcp_nodelay(true)
        .timeout(UPLOAD_TIMEOUT)
        .build()?;
    let url: Rc<str> = Rc::from(plan.url.as_str());
    let gate = Arc::new(Semaphore::new(plan.connections));
    let per_frame = schedule.per_frame.max(1);
    let fix_ms = schedule.period.as_secs_f64() * 1000.0;
    let period = schedule.frame_period();
    let mut walkers = plan.walkers;
    let mut last_t = vec![0i64; walkers.len()];
    let mut fixes = Vec::with_capacity(per_frame);
    'rounds: for round in 0u32.. {
        for i in 0..walkers.len() {
            let due = schedule.start + schedule.phase(i) + period * round;
            if due >= schedule.end {
                break 'rounds;
            }
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            let permit = Arc::clone(&gate).acquire_owned().await?;
            let now = Instant::now();
            if now.saturating_duration_since(due) > period {
                Counts::bump(&counts.skipped, per_frame as u64);
                continue;
            }
            let now_ms = unix_ms();
            fixes.clear();
            for k in (0..per_frame).rev() {
                let t = (now_ms - (k as f64 * fix_ms) as i64).max(last_t[i] + 1);
                last_t[i] = t;
                fixes.push(walkers[i].fix_at(t));
            }
            let mut body = Vec::with_capacity(2 + 27 * per_frame);
            encode_fixes(&fixes, &mut body)?;
            let measured =
                counts.measure_from.get().is_some_and(|m| now >= m) && now < schedule.end;
            Counts::bump(&counts.sent, per_frame as u64);
            if measured {
                Counts::bump(&counts.sent_measured, per_frame as u64);
                Counts::bump(&counts.requests_measured, 1);
            }
            let request = client
                .post(&*url)
                .header(AUTHORIZATION, plan.auth[i].clone())
                .header(CONTENT_TYPE, BINARY_MEDIA_TYPE)
                .body(body);
            let counts = Rc::clone(&counts);
            tokio::task::spawn_local(async move {
                let outcome = upload(request, per_frame).await;
                let answered = Instant::now();
                if let Err(why) = outcome {
                    Counts::bump(&counts.failed_requests, 1);
                    counts.keep(|| why);
                }
                if measured {
                    let us = answered.saturating_duration_since(now).as_micros();
                    record(
                        &mut counts.latency.borrow_mut(),
                        u64::try_from(us).unwrap_or(u64::MAX),
                    );
                    let last = counts
                        .last_answer
                        .get()
                        .map_or(answered, |t| t.max(answered));
                    counts.last_answer.set(Some(last));
                }
                drop(permit);
            });
        }
    }
    // Every permit back: every answer is in.
    let _all = gate.acquire_many(plan.connections as u32).await?;
    Ok(())
}

/// One batch: `Ok` when the engine answered that it took all `fixes` of it.
async fn upload(request: reqwest::RequestBuilder, fixes: usize) -> Result<(), String> {
    let response = request.send().await.map_err(|e| format!("upload: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("upload answered {status}: {body}"));
    }
    let result: BatchResult = response
        .json()
        .await
        .map_err(|e| format!("upload answer: {e}"))?;
    match result.rejected.first() {
        Some(r) => Err(format!(
            "{} of {fixes} refused: {}",
            result.rejected.len(),
            r.reason
        )),
        None if result.accepted as usize != fixes => {
            Err(format!("{} of {fixes} taken", result.accepted))
        }
        None => Ok(()),
    }
}
