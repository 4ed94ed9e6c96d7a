//! `loadtest api`: the control plane's message path and sign-in under load.
//!
//! Setup: `--members` accounts, one group with all of them, one `/v1/events` WebSocket each.
//! Then an open loop posts `--rate` messages a second (senders in turn) for `--duration`
//! seconds after `--warmup`; each body carries its send time, and every member's socket records
//! send → delivery latency. Every message must reach every member: a missing delivery fails the
//! run, as does a p99 above `--max-p99-ms`. Last, `--logins` concurrent password sign-ins run
//! while `/livez` is probed every 5 ms: sign-in throughput is argon2's, and the probe's latency
//! shows whether the async threads stayed responsive.

use crate::measure::{micros_histogram, record};
use crate::report::Percentiles;
use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "loadtest password 1";

/// Arguments of `loadtest api`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The control plane.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub base: String,
    /// Members of the group (each with one WebSocket).
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Messages posted per second (open loop).
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds sent before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Concurrent password sign-ins in the last phase (0: skip). The control plane must trust
    /// 127.0.0.1 as a proxy (`--trusted-proxies 127.0.0.1`) so each counts as its own address.
    #[arg(long, default_value_t = 200)]
    pub logins: usize,
    /// Pin the load generator to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Fail when the delivery p99 is above this (milliseconds).
    #[arg(long, default_value_t = 10.0)]
    pub max_p99_ms: f64,
    /// Write the JSON report here.
    #[arg(long, default_value = "loadtest-api.json")]
    pub report: PathBuf,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct ApiReport {
    pub members: usize,
    pub rate: u32,
    pub duration_secs: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub achieved_rate: f64,
    /// Deliveries expected (messages sent × members) and missing at the end.
    pub deliveries_expected: u64,
    pub deliveries_missing: u64,
    /// Message send → WebSocket delivery, µs, over every member.
    pub delivery_us: Percentiles,
    /// `POST .../messages` → 201, µs.
    pub send_us: Percentiles,
    pub logins: usize,
    pub login_errors: u64,
    pub logins_per_second: f64,
    /// `/livez` while the sign-ins ran, µs.
    pub livez_us: Option<Percentiles>,
    /// CPU time of this load generator over wall time while the messages were measured: near
    /// 1.0 means the generator, not the server, may be setting the latencies.
    pub generator_busy_ratio: f64,
    pub pass: bool,
}

struct Member {
    id: String,
    email: String,
    token: String,
}

/// Runs the scenario; `Ok(false)` when a threshold failed.
pub fn run(args: ApiArgs) -> anyhow::Result<bool> {
    if let Some(cpu) = args.cpu {
        crate::pin::to_cpu(cpu)?;
    }
    crate::pin::raise_fd_limit(args.members * 2 + 4096)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(scenario(args))
}

async fn scenario(args: ApiArgs) -> anyhow::Result<bool> {
    if args.members < 2 {
        bail!("--members must be at least 2");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let base = args.base.trim_end_matches('/').to_owned();
    let members = setup(&http, &base, args.members).await?;
    let group = make_group(&http, &base, &members).await?;
    eprintln!("{} members in group {group}", members.len());

    let start = Instant::now();
    let measuring = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(micros_histogram()));
    let ws_url = base.replacen("http", "ws", 1) + "/v1/events";
    let mut readers = Vec::new();
    for m in &members {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .context("opening /v1/events")?;
        let hello = json!({"type": "hello", "access_token": m.token});
        ws.send(Message::Text(hello.to_string().into())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"type\":\"ready\"") => break,
                Some(Ok(_)) => {}
                other => bail!("no ready frame: {other:?}"),
            }
        }
        let (measuring, delivered, latency) = (
            Arc::clone(&measuring),
            Arc::clone(&delivered),
            Arc::clone(&latency),
        );
        // One thread runs every task: the shared histogram's lock is never contended.
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Some(sent_us) = sent_at(&text) else {
                    continue;
                };
                let now_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                if measuring.load(Ordering::Relaxed) {
                    record(
                        &mut latency.lock().unwrap_or_else(PoisonError::into_inner),
                        now_us.saturating_sub(sent_us),
                    );
                }
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // The open loop.
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let send_latency = Arc::new(Mutex::new(micros_histogram()));
    let total = u64::from(args.rate) * (args.duration + args.warmup);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let warmup_end = Duration::from_secs(args.warmup);
    let mut in_flight = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let loop_start = Instant::now();
    let mut measure_start = None;
    let mut cpu_start = Duration::ZERO;
    for i in 0..total {
        ticker.tick().await;
        if measure_start.is_none() && loop_start.elapsed() >= warmup_end {
            measuring.store(true, Ordering::Relaxed);
            measure_start = Some((Instant::now(), sent.load(Ordering::Relaxed)));
            cpu_start = cpu_time();
        }
        let m = &members[usize::try_from(i).unwrap_or(0) % members.len()];
        let request = http
            .post(format!("{base}/v1/groups/{group}/messages"))
            .bearer_auth(&m.token)
            .json(&json!({
                "client_msg_id": uuid::Uuid::new_v4().to_string(),
                "body": format!("t={}", start.elapsed().as_micros()),
            }));
        let (sent, errors, send_latency) = (
            Arc::clone(&sent),
            Arc::clone(&errors),
            Arc::clone(&send_latency),
        );
        let measured = measure_start.is_some();
        in_flight.push(tokio::spawn(async move {
            let t0 = Instant::now();
            match request.send().await {
                Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                    sent.fetch_add(1, Ordering::Relaxed);
                    if measured {
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        record(
                            &mut send_latency.lock().unwrap_or_else(PoisonError::into_inner),
                            us,
                        );
                    }
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in in_flight {
        let _ = task.await;
    }
    let (measured_from, sent_before) = measure_start.unwrap_or((loop_start, 0));
    let elapsed = measured_from.elapsed().as_secs_f64();
    let generator_busy_ratio = (cpu_time().saturating_sub(cpu_start)).as_secs_f64() / elapsed;
    let sent_total = sent.load(Ordering::Relaxed);
    let achieved = (sent_total - sent_before) as f64 / elapsed;
    // Every answered send was fanned out before its answer; wait for the sockets to drain.
    let expected = sent_total * members.len() as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missing = expected.saturating_sub(delivered.load(Ordering::Relaxed));
    for r in &readers {
        r.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    let delivery = Percentiles::of(&latency.lock().unwrap_or_else(PoisonError::into_inner));
    let send = Percentiles::of(&send_latency.lock().unwrap_or_else(PoisonError::into_inner));

    let (login_errors, logins_per_second, livez) = if args.logins > 0 {
        logins(&http, &base, &members, args.logins).await?
    } else {
        (0, 0.0, None)
    };

    let pass = missing == 0
        && errors.load(Ordering::Relaxed) == 0
        && (delivery.p99 as f64) <= args.max_p99_ms * 1000.0;
    let report = ApiReport {
        members: members.len(),
        rate: args.rate,
        duration_secs: args.duration,
        sent: sent_total,
        send_errors: errors.load(Ordering::Relaxed),
        achieved_rate: achieved,
        deliveries_expected: expected,
        deliveries_missing: missing,
        delivery_us: delivery,
        send_us: send,
        logins: args.logins,
        login_errors,
        logins_per_second,
        livez_us: livez,
        generator_busy_ratio,
        pass,
    };
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)?)?;
    print!("{}", table(&report));
    Ok(pass)
}

/// CPU time (user and system) this process has used so far.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(
                u64::try_from(tv.tv_sec()).unwrap_or(0),
                u32::try_from(tv.tv_usec()).unwrap_or(0) * 1000,
            )
        };
        t(u.user_time()) + t(u.system_time())
    })
}

/// The send time (µs since the run started) in a message event's body, if it is one of ours.
fn sent_at(frame: &str) -> Option<u64> {
    if !frame.contains("\"kind\":\"message\"") {
        return None;
    }
    let at = frame.find("\"body\":\"t=")? + "\"body\":\"t=".len();
    let digits = frame[at..].split('"').next()?;
    digits.parse().ok()
}

async fn setup(http: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<Vec<Member>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let mut members = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let batch = chunk.iter().map(|i| {
            let username = format!("lt{run}{i}");
            let email = format!("{username}@load.test");
            let body = json!({"username": username, "email": email, "password": PASSWORD});
            async move {
                let r = http
                    .post(format!("{base}/v1/auth/register"))
                    .json(&body)
                    .send()
                    .await?;
                if r.status() != reqwest::StatusCode::CREATED {
                    bail!("register answered {}: {}", r.status(), r.text().await?);
                }
                let v: Value = r.json().await?;
                Ok(Member {
                    id: v["user"]["id"].as_str().unwrap_or_default().to_owned(),
                    email,
                    token: v["access_token"].as_str().unwrap_or_default().to_owned(),
                })
            }
        });
        for m in futures_util::future::join_all(batch).await {
            members.push(m?);
        }
    }
    Ok(members)
}

async fn make_group(
    http: &reqwest::Client,
    base: &str,
    members: &[Member],
) -> anyhow::Result<String> {
    let admin = &members[0];
    let g: Value = http
        .post(format!("{base}/v1/groups"))
        .bearer_auth(&admin.token)
        .json(&json!({"name": "loadtest"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let group = g["id"].as_str().context("group id")?.to_owned();
    for m in &members[1..] {
        let invite: Value = http
            .post(format!("{base}/v1/groups/{group}/invites"))
            .bearer_auth(&admin.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let code = invite["code"].as_str().context("invite code")?;
        http.post(format!("{base}/v1/invites/{code}/accept"))
            .bearer_auth(&m.token)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("accepting as {}", m.id))?;
    }
    Ok(group)
}

/// Concurrent sign-ins (each from its own forwarded address) while `/livez` is probed.
async fn logins(
    http: &reqwest::Client,
    base: &str,
    members: &[Member],
    n: usize,
) -> anyhow::Result<(u64, f64, Option<Percentiles>)> {
    let done = Arc::new(AtomicBool::new(false));
    let probe = {
        let (http, url, done) = (http.clone(), format!("{base}/livez"), Arc::clone(&done));
        tokio::spawn(async move {
            let mut h = micros_histogram();
            while !done.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if http.get(&url).send().await.is_ok() {
                    record(
                        &mut h,
                        u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX),
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            h
        })
    };
    let t0 = Instant::now();
    let attempts = (0..n).map(|i| {
        let m = &members[i % members.len()];
        let body = json!({"email": m.email, "password": PASSWORD});
        let forwarded = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        async move {
            http.post(format!("{base}/v1/auth/login"))
                .header("x-forwarded-for", forwarded)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let secs = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let livez: Histogram<u64> = probe.await?;
    let mut refused = std::collections::BTreeMap::<u16, u64>::new();
    for status in results.iter().filter(|s| **s != 200) {
        *refused.entry(*status).or_default() += 1;
    }
    if !refused.is_empty() {
        eprintln!("sign-ins refused, by status (0: no answer): {refused:?}");
    }
    let errors = refused.values().sum::<u64>();
    let ok = n as u64 - errors;
    Ok((errors, ok as f64 / secs, Some(Percentiles::of(&livez))))
}

fn table(r: &ApiReport) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut out = String::new();
    out += &format!(
        "messages: {} sent at {:.0}/s ({} asked), {} send errors; {} members; deliveries missing: {}\n",
        r.sent, r.achieved_rate, r.rate, r.send_errors, r.members, r.deliveries_missing
    );
    out += &format!(
        "load generator busy {:.0} % of its core while measured\n",
        r.generator_busy_ratio * 100.0
    );
    out += "| path | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|\n";
    for (name, p) in [
        ("send → WebSocket delivery (every member)", &r.delivery_us),
        ("POST messages → 201", &r.send_us),
    ]
    .into_iter()
    .chain(r.livez_us.as_ref().map(|p| ("/livez during sign-ins", p)))
    {
        out += &format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            p.count,
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.p999),
            ms(p.max)
        );
    }
    if r.logins > 0 {
        out += &format!(
            "sign-ins: {} at {:.1}/s, {} errors\n",
            r.logins, r.logins_per_second, r.login_errors
        );
    }
    out += if r.pass { "PASS\n" } else { "FAIL\n" };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_are_read_from_message_events_only() {
        let event =
            r#"{"type":"event","kind":"message","message":{"id":3,"body":"t=12345","x":1}}"#;
        assert_eq!(sent_at(event), Some(12345));
        assert_eq!(
            sent_at(r#"{"type":"event","kind":"message","message":{"body":"hi"}}"#),
            None
        );
        assert_eq!(sent_at(r#"{"type":"markers","body":"t=5"}"#), None);
    }
}
