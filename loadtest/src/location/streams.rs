//! The engine phase's clients: one WebSocket per user, a writer task sending its fixes on
//! schedule and a reader task accounting for what the engine sends back, all on one thread
//! (a `LocalSet`), sharing plain cells.

use super::world::Walker;
use crate::measure::{micros_histogram, record};
use anyhow::{Context as _, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use protocol::ids::UserId;
use protocol::location::{AlertKind, ServerFrame, encode_fixes};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type Sink = SplitSink<Ws, Message>;
type Source = SplitStream<Ws>;

/// How long a connection may take to open and say `ready`, and how long the end of the run
/// waits for the engine to catch up: guards against a hang, not part of any measurement.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Reasons of refusals and closes kept for the report.
const KEEP_REASONS: usize = 8;

/// When fixes are sent: user `i` sends at `start + i·period/users + k·per_frame·period` while
/// before `end`, `per_frame` fixes a frame taken `period` apart.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    /// Between two fixes of a user.
    pub period: Duration,
    pub per_frame: usize,
    pub users: usize,
    pub end: Instant,
}

impl Schedule {
    /// Between two frames of a user.
    pub fn frame_period(&self) -> Duration {
        self.period * self.per_frame.max(1) as u32
    }

    /// When user `i` sends its first frame, after `start`: the users spread evenly over a frame's
    /// period. (Spread over one fix's period, every user's frame went out in the first 1/K of
    /// each frame period: one burst of all the users' fixes, and alert latency that grew with K.)
    pub fn phase(&self, i: usize) -> Duration {
        self.frame_period()
            .mul_f64(i as f64 / self.users.max(1) as f64)
    }
}

/// What every task of the phase reads and counts. One thread: cells, no locks.
#[derive(Debug)]
pub struct Shared {
    pub epoch: Instant,
    index: HashMap<UserId, u32>,
    /// When each user's latest fix was handed to its socket, ns since `epoch` (0: none yet).
    last_send_ns: Vec<Cell<u64>>,
    pub measure_from: Cell<Option<Instant>>,
    /// Set when the run closes its streams: a close from then on is expected.
    pub closing: Cell<bool>,

    pub sent: Cell<u64>,
    /// Fixes sent inside the measurement window.
    pub sent_measured: Cell<u64>,
    /// Fixes dropped because the writer was more than a period late (the generator fell behind).
    pub skipped: Cell<u64>,
    pub send_errors: Cell<u64>,
    pub send_lag: RefCell<Histogram<u64>>,

    /// `positions` frames received in the window, and their bytes.
    pub positions: Cell<u64>,
    pub positions_bytes: Cell<u64>,
    pub rejected: Cell<u64>,
    pub rejected_reasons: RefCell<Vec<String>>,
    pub unknown_frames: Cell<u64>,
    pub closes: RefCell<Vec<String>>,
    pub unexpected_closes: Cell<u64>,

    pub alert_deliveries: Cell<u64>,
    pub alert_ids: RefCell<HashSet<u128>>,
    pub near: Cell<u64>,
    pub apart: Cell<u64>,
    pub other_alerts: Cell<u64>,
    /// Arrival − latest send of either member of the pair, µs, per delivery in the window.
    pub alert_latency: RefCell<Histogram<u64>>,

    /// Per user: its final ping was answered, or its stream is gone (or never opened).
    done: Vec<Cell<bool>>,
    done_left: Cell<usize>,
    pub barrier_at: Cell<Option<Instant>>,
    barrier: Notify,
    readers_left: Cell<usize>,
    readers: Notify,
}

impl Shared {
    pub fn new(users: &[Walker]) -> Self {
        let n = users.len();
        Self {
            epoch: Instant::now(),
            index: users
                .iter()
                .enumerate()
                .map(|(i, w)| (w.id, i as u32))
                .collect(),
            last_send_ns: (0..n).map(|_| Cell::new(0)).collect(),
            measure_from: Cell::new(None),
            closing: Cell::new(false),
            sent: Cell::new(0),
            sent_measured: Cell::new(0),
            skipped: Cell::new(0),
            send_errors: Cell::new(0),
            send_lag: RefCell::new(micros_histogram()),
            positions: Cell::new(0),
            positions_bytes: Cell::new(0),
            rejected: Cell::new(0),
            rejected_reasons: RefCell::new(Vec::new()),
            unknown_frames: Cell::new(0),
            closes: RefCell::new(Vec::new()),
            unexpected_closes: Cell::new(0),
            alert_deliveries: Cell::new(0),
            alert_ids: RefCell::new(HashSet::new()),
            near: Cell::new(0),
            apart: Cell::new(0),
            other_alerts: Cell::new(0),
            alert_latency: RefCell::new(micros_histogram()),
            done: (0..n).map(|_| Cell::new(false)).collect(),
            done_left: Cell::new(n),
            barrier_at: Cell::new(None),
            barrier: Notify::new(),
            readers_left: Cell::new(0),
            readers: Notify::new(),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn measuring(&self, at: Instant) -> bool {
        self.measure_from.get().is_some_and(|m| at >= m) && !self.closing.get()
    }

    fn bump(c: &Cell<u64>, by: u64) {
        c.set(c.get() + by);
    }

    fn keep(list: &RefCell<Vec<String>>, reason: impl FnOnce() -> String) {
        let mut list = list.borrow_mut();
        if list.len() < KEEP_REASONS {
            list.push(reason());
        }
    }

    /// User `i` has nothing more to answer before the end (its ping came back, its stream is
    /// gone, or it never connected). Counted once.
    pub fn finish(&self, i: usize) {
        if self.done[i].replace(true) {
            return;
        }
        self.done_left.set(self.done_left.get() - 1);
        if self.done_left.get() == 0 {
            self.barrier_at.set(Some(Instant::now()));
            self.barrier.notify_one();
        }
    }

    /// Resolves when every user is [`finish`](Self::finish)ed.
    pub async fn all_finished(&self) {
        while self.done_left.get() > 0 {
            self.barrier.notified().await;
        }
    }

    /// Streams whose final ping is still unanswered.
    pub fn unfinished(&self) -> usize {
        self.done_left.get()
    }

    /// Resolves when every reader has ended.
    pub async fn readers_ended(&self) {
        while self.readers_left.get() > 0 {
            self.readers.notified().await;
        }
    }

    fn text(&self, i: usize, text: &str) {
        let arrived = Instant::now();
        // The bulk of the traffic; it is counted, not parsed (the tag is serialised first).
        if text.starts_with(r#"{"type":"positions""#) {
            if self.measuring(arrived) {
                Self::bump(&self.positions, 1);
                Self::bump(&self.positions_bytes, text.len() as u64);
            }
            return;
        }
        match serde_json::from_str::<ServerFrame>(text) {
            Ok(ServerFrame::Alert(alert)) => {
                Self::bump(&self.alert_deliveries, 1);
                let first = self.alert_ids.borrow_mut().insert(alert.id);
                let (AlertKind::Near { a, b } | AlertKind::Apart { a, b }) = alert.kind else {
                    if first {
                        Self::bump(&self.other_alerts, 1);
                    }
                    return;
                };
                if first {
                    match alert.kind {
                        AlertKind::Near { .. } => Self::bump(&self.near, 1),
                        _ => Self::bump(&self.apart, 1),
                    }
                }
                let sent = [a, b]
                    .iter()
                    .filter_map(|u| self.index.get(u))
                    .map(|&u| self.last_send_ns[u as usize].get())
                    .max()
                    .unwrap_or(0);
                if sent > 0 && self.measuring(arrived) {
                    let us = self.ns(arrived).saturating_sub(sent) / 1000;
                    record(&mut self.alert_latency.borrow_mut(), us);
                }
            }
            Ok(ServerFrame::Rejected { rejected }) => {
                Self::bump(&self.rejected, rejected.len() as u64);
                if let Some(r) = rejected.first() {
                    Self::keep(&self.rejected_reasons, || r.reason.clone());
                }
            }
            Ok(ServerFrame::Pong {}) => self.finish(i),
            Ok(ServerFrame::Positions { .. }) => {}
            Ok(ServerFrame::Ready { .. }) => {}
            Err(_) => Self::bump(&self.unknown_frames, 1),
        }
    }

    fn ended(&self, i: usize, why: String) {
        if !self.closing.get() {
            Self::bump(&self.unexpected_closes, 1);
            Self::keep(&self.closes, || why);
        }
        self.finish(i);
    }
}

/// Opens user `i`'s stream with its token and waits for `ready`.
pub async fn connect(url: &str, token: &str) -> anyhow::Result<(Sink, Source)> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().context("token header")?,
    );
    // Thousands of sockets: small read buffers; every frame goes out at once.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .context("timed out opening the stream")??;
    loop {
        let frame = tokio::time::timeout(CONNECT_TIMEOUT, ws.next())
            .await
            .context("timed out waiting for ready")?;
        match frame {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerFrame>(t.as_str()) {
                Ok(ServerFrame::Ready {
                    sharing, refused, ..
                }) => {
                    if let Some(r) = refused.first() {
                        bail!("the engine refused the group: {}", r.reason);
                    }
                    if sharing.is_empty() {
                        bail!("the engine shares with no group");
                    }
                    break;
                }
                _ => bail!("the first frame was not ready: {}", t.as_str()),
            },
            Some(Ok(Message::Close(c))) => bail!("closed before ready: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the stream ended before ready"),
        }
    }
    Ok(ws.split())
}

/// Reads user `i`'s stream on a task of the current `LocalSet` until it ends.
pub fn spawn_reader(shared: &Rc<Shared>, i: usize, source: Source) {
    shared.readers_left.set(shared.readers_left.get() + 1);
    tokio::task::spawn_local(reader(Rc::clone(shared), i, source));
}

async fn reader(shared: Rc<Shared>, i: usize, mut source: Source) {
    let why = loop {
        match source.next().await {
            Some(Ok(Message::Text(t))) => shared.text(i, t.as_str()),
            Some(Ok(Message::Binary(_))) => Shared::bump(&shared.unknown_frames, 1),
            Some(Ok(Message::Close(c))) => {
                break c.map_or("closed without a code".into(), |c| {
                    format!("closed {}: {}", u16::from(c.code), c.reason)
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("stream error: {e}"),
            None => break "the stream ended".into(),
        }
    };
    shared.ended(i, why);
    shared.readers_left.set(shared.readers_left.get() - 1);
    shared.readers.notify_one();
}

/// Now, Unix ms (a fix's time).
pub(super) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sends user `i`'s fixes on schedule (`per_frame` a binary frame), then a `ping` (answered
/// only after every fix before it went through the engine), then waits for `close` to close.
pub async fn writer(
    shared: Rc<Shared>,
    i: usize,
    mut walker: Walker,
    mut sink: Sink,
    schedule: Schedule,
    mut close: watch::Receiver<bool>,
) {
    let per_frame = schedule.per_frame.max(1);
    let fix_ms = schedule.period.as_secs_f64() * 1000.0;
    let period = schedule.frame_period();
    let mut due = schedule.start + schedule.phase(i);
    let mut last_t = 0i64;
    let mut fixes = Vec::with_capacity(per_frame);
    let mut frame = Vec::with_capacity(2 + 27 * per_frame);
    let mut alive = true;
    while due < schedule.end {
        tokio::time::sleep_until(due.into()).await;
        let mut now = Instant::now();
        let late = now.saturating_duration_since(due);
        if late > period {
            // More than a period behind: the missed fixes are not sent in a burst (which could
            // exceed the engine's rate limit), they are counted as the generator's shortfall.
            let missed = (late.as_nanos() / period.as_nanos()) as u32;
            Shared::bump(&shared.skipped, u64::from(missed) * per_frame as u64);
            due += period * missed;
        }
        // The frame's fixes were taken a period apart, the last one now.
        let now_ms = unix_ms();
        fixes.clear();
        for k in (0..per_frame).rev() {
            let t = (now_ms - (k as f64 * fix_ms) as i64).max(last_t + 1);
            last_t = t;
            fixes.push(walker.fix_at(t));
        }
        frame.clear();
        if encode_fixes(&fixes, &mut frame).is_err() {
            break;
        }
        now = Instant::now();
        shared.last_send_ns[i].set(shared.ns(now).max(1));
        let measured = shared.measuring(now) && now < schedule.end;
        if sink.send(Message::binary(frame.clone())).await.is_err() {
            Shared::bump(&shared.send_errors, 1);
            alive = false;
            break;
        }
        Shared::bump(&shared.sent, per_frame as u64);
        if measured {
            Shared::bump(&shared.sent_measured, per_frame as u64);
            let lag = now.saturating_duration_since(due);
            record(
                &mut shared.send_lag.borrow_mut(),
                u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            );
        }
        due += period;
    }
    // The ping follows the last fix at once: the streams' pings are spread over the last
    // period like their fixes (not a burst at the end the engine would have to work off).
    if alive
        && sink
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .is_err()
    {
        alive = false;
    }
    if !alive {
        shared.finish(i);
    }
    let _ = close.wait_for(|c| *c).await;
    let _ = sink.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::Schedule;
    use std::time::{Duration, Instant};

    #[test]
    fn users_spread_over_a_frames_period() {
        let start = Instant::now();
        let schedule = Schedule {
            start,
            period: Duration::from_millis(100),
            per_frame: 10,
            users: 1000,
            end: start + Duration::from_secs(10),
        };
        assert_eq!(schedule.frame_period(), Duration::from_secs(1));
        assert_eq!(schedule.phase(0), Duration::ZERO);
        assert_eq!(schedule.phase(500), Duration::from_millis(500));
        // The last user sends just before the first one's second frame, not within 100 ms.
        assert!(schedule.phase(999) > Duration::from_millis(990));
        // Each 100 ms of the frame period holds a tenth of the users.
        let first_tenth = (0..1000)
            .filter(|&i| schedule.phase(i) < Duration::from_millis(100))
            .count();
        assert_eq!(first_tenth, 100);
    }
}
