//! `loadtest location`: the location engine's WebSocket path under load, and the same workload
//! against Redis GEO for comparison.
//!
//! Setup: `--users` users in groups of `--group-min`..=`--group-max` (seeded), each group around
//! a home point anywhere between 60° S and 60° N, members starting within 1 km of it and walking
//! (1.4 m/s) or driving (15 m/s) with random turns, so pairs cross the 200 m (near) and 250 m
//! (apart) lines now and then; `--converging-pairs` adds pairs that start 300 m apart and drive
//! at each other, for alerts that are sure to come. No control plane: the run signs its own
//! location tokens (one group each, exact, 200 m) with a fresh key and serves the JWKS itself
//! (an engine started elsewhere is pointed at it with `--jwks-url`, the port fixed by
//! `--jwks-port`). Without `--target` the engine runs in this process on its own thread and
//! tokio current-thread runtime, pinned to `--engine-cpu`: the real server over real sockets,
//! with one core's worth of CPU. Every user opens one stream (`--connect-concurrency` at once).
//! `--http-users` adds users in groups of their own who upload batches of `--http-batch` fixes
//! over HTTP (`POST /v1/fixes`, binary, each with their own token) through
//! `--http-connections` keep-alive connections, as phones in the background do through a load
//! balancer or a gateway ([`uploads`]): a stream is a socket a user at both ends, and one
//! process may hold only so many (this machine kind: 20,000), while the comparison with Redis
//! needs more load than that.
//!
//! Load: an open loop. Each user takes a fix every `users / rate` seconds and sends it in a
//! binary frame, or with `--fixes-per-frame K` sends K at once every K periods (their times a
//! period apart, the last one now), the users' phases spread evenly over the frame's period
//! (K fix periods); a writer
//! more than a frame's period late drops the missed fixes (counted as `skipped`) rather than bursting into the engine's rate limit. The
//! generator is one thread (`--cpu`) so it does not take the engine's core; its busy ratio and
//! send lag are reported, and the achieved rate is what is counted, not what was asked for.
//!
//! What is measured, after `--warmup`, over `--duration`:
//! - Fixes sent (streams' and uploads'), and fixes processed: an upload's answer comes after
//!   the hub took its fixes and says how many it took (all, or the run fails); for the streams,
//!   the engine acknowledges nothing per fix (it answers only refused fixes, with a `rejected`
//!   frame, which fails the run), so at the end of the window
//!   every stream sends a `ping`. A stream's connection task handles frames in order and hands
//!   each fix frame to the hub before it reads the next one, so the `pong` proves every fix
//!   sent before it was taken. Processed fixes/s = fixes sent in the window ÷ (window start →
//!   last pong, or last answer to an upload sent in the window). An engine that kept up
//!   answers within milliseconds of the end; one that fell behind answers late (the backlog it
//!   drains) and its rate drops accordingly. Fixes left over from the warmup and worked off
//!   inside the window are not counted, so the figure errs low.
//! - Alert latency: every `near`/`apart` alert frame, on every member's stream, minus when the
//!   latest fix of either member of the pair was handed to its socket. The fix that triggered
//!   the alert is that latest fix unless another fix of the pair was sent between the trigger
//!   and the arrival (then the figure is a lower bound); at ≤ 20 fixes/s a user and
//!   millisecond latencies that is rare.
//! - `positions` frames (the bulk of what the engine sends: a moved group's members, to each of
//!   its streams, at most once a second) are counted, not parsed. Any unexpected close fails the run, as does
//!   processing below 95 % of the offered rate and an alert p99 above `--max-alert-p99-ms`.
//! - The engine's CPU time over the window: its thread's (`getrusage(RUSAGE_THREAD)`)
//!   in-process, its process's with `--target` and `--engine-pid`. Fixes per second of engine
//!   CPU is what one core would take at 100 %.
//!
//! `--against-redis URL` then runs the same users, groups and movement against Redis (see
//! [`redis_geo`]) for `--redis-duration` seconds as fast as it answers, and fails the run when
//! the engine's processed fixes/s is below `--min-ratio` times Redis's.

mod redis_geo;
mod report;
mod setup;
mod streams;
mod uploads;
mod world;

pub use report::LocationReport;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::api::Jwks;
use protocol::location::MAX_FIXES_PER_SEC;
use report::{Alerts, Connections, EngineSide, Fixes, Frames, Scenario};
use setup::{InProcessEngine, JwksServer};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use streams::{Schedule, Shared};
use world::{Layout, World};

/// Options of `loadtest location`.
#[derive(Debug, Clone, clap::Args)]
pub struct LocationArgs {
    /// A location engine already running (http://HOST:PORT), started with
    /// `convoy location-engine --jwks-url` set to the URL this run prints (fix it with
    /// --jwks-port). Without it the engine runs in this process on a thread of its own.
    #[arg(long)]
    pub target: Option<String>,
    /// Serve the run's JWKS on this port on every interface (default: any port on 127.0.0.1).
    #[arg(long)]
    pub jwks_port: Option<u16>,
    /// Users, one stream each.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Smallest group.
    #[arg(long, default_value_t = 4)]
    pub group_min: usize,
    /// Largest group.
    #[arg(long, default_value_t = 20)]
    pub group_max: usize,
    /// The first groups are this many pairs starting 300 m apart and driving at each other.
    #[arg(long, default_value_t = 0)]
    pub converging_pairs: usize,
    /// Fixes per second over all users, streams' and uploaders' (open loop; at most 20 a
    /// user).
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Fixes a binary frame: a user sends this many at once, taken `users / rate` seconds
    /// apart (a phone uploading what it recorded meanwhile; 1: each fix as it is taken).
    #[arg(long, default_value_t = 1)]
    pub fixes_per_frame: usize,
    /// More users, who upload their fixes in batches over HTTP (`POST /v1/fixes`, binary, their
    /// own token each) through --http-connections keep-alive connections, as phones in the
    /// background do through a load balancer or gateway: load past the sockets one process
    /// may hold. In groups of their own; counted with the streams' fixes.
    #[arg(long, default_value_t = 0)]
    pub http_users: usize,
    /// Keep-alive connections the uploads share (one request in flight on each).
    #[arg(long, default_value_t = 32)]
    pub http_connections: usize,
    /// Fixes an upload: a user sends this many at once, taken a fix period apart (at most 200,
    /// the engine's burst; fewer leave the rate limit room for a late batch).
    #[arg(long, default_value_t = 100)]
    pub http_batch: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds sent before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seed of the layout and the movement.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Streams opening at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Pin the load generator to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Pin the in-process engine to this CPU.
    #[arg(long)]
    pub engine_cpu: Option<usize>,
    /// With --target on this machine: the engine's process id, to report its CPU time.
    #[arg(long)]
    pub engine_pid: Option<u32>,
    /// Afterwards, run the same workload against Redis GEO at this URL and compare.
    #[arg(long)]
    pub against_redis: Option<String>,
    /// Redis connections, one pipeline in flight on each (fewer leave Redis waiting on round
    /// trips).
    #[arg(long, default_value_t = 16)]
    pub redis_connections: usize,
    /// Fixes per Redis pipeline (each a GEOADD and a GEOSEARCH).
    #[arg(long, default_value_t = 64)]
    pub redis_pipeline: usize,
    /// Seconds of the Redis phase (default: --duration).
    #[arg(long)]
    pub redis_duration: Option<f64>,
    /// Fail when the alert latency p99 is above this (milliseconds).
    #[arg(long, default_value_t = 50.0)]
    pub max_alert_p99_ms: f64,
    /// Fail when the engine's fixes/s is below this many times Redis's (with --against-redis).
    #[arg(long, default_value_t = 5.0)]
    pub min_ratio: f64,
    /// Write the JSON report here.
    #[arg(long, default_value = "loadtest-location.json")]
    pub report: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the scenario, writes the JSON report, prints the table; `Ok(false)` when a threshold
/// failed.
pub fn run(args: LocationArgs) -> anyhow::Result<bool> {
    let per_user = args.rate / (args.users + args.http_users).max(1) as f64;
    if args.users < 2 {
        bail!("--users must be at least 2");
    }
    if !(1..=protocol::location::MAX_BATCH).contains(&args.fixes_per_frame) {
        bail!(
            "--fixes-per-frame must be 1 to {}",
            protocol::location::MAX_BATCH
        );
    }
    if !(per_user > 0.0 && per_user <= f64::from(MAX_FIXES_PER_SEC)) {
        bail!(
            "--rate {} over {} users is {per_user:.2} fixes/s a user; the engine takes at most {MAX_FIXES_PER_SEC}",
            args.rate,
            args.users + args.http_users
        );
    }
    if args.http_users > 0
        && (args.http_connections == 0
            || !(1..=protocol::location::FIX_BURST as usize).contains(&args.http_batch))
    {
        bail!(
            "--http-connections must be at least 1 and --http-batch 1 to {}",
            protocol::location::FIX_BURST
        );
    }
    let max_members = location_engine::engine::MAX_GROUP_MEMBERS;
    if args.group_min < 2 || args.group_min > args.group_max || args.group_max > max_members {
        bail!("groups must be 2 ≤ --group-min ≤ --group-max ≤ {max_members}");
    }
    if args.converging_pairs * 2 > args.users {
        bail!("--converging-pairs needs two users a pair");
    }
    let redis_duration = args.redis_duration.unwrap_or(args.duration);
    if !(args.duration > 0.0 && args.warmup >= 0.0 && redis_duration > 0.0) {
        bail!("--duration and --redis-duration must be positive, --warmup not negative");
    }
    // Tokens live 15 minutes; the run must end well before.
    if args.warmup + args.duration > 600.0 {
        bail!("--warmup + --duration must be at most 600 s");
    }
    if args.connect_concurrency == 0 || args.redis_connections == 0 || args.redis_pipeline == 0 {
        bail!("concurrency, connections and pipeline must be at least 1");
    }

    let world = World::plan(&Layout {
        users: args.users,
        group_min: args.group_min,
        group_max: args.group_max,
        converging_pairs: args.converging_pairs,
        seed: args.seed,
    });
    // The uploaders' own groups, laid out from another seed.
    let uploaders = World::plan(&Layout {
        users: args.http_users,
        group_min: args.group_min,
        group_max: args.group_max,
        converging_pairs: 0,
        seed: args.seed ^ 0x5eed_0f00,
    });
    let signer = setup::signer();
    let jwks = JwksServer::start(
        &Jwks {
            keys: vec![signer.jwk()],
        },
        args.jwks_port,
    )?;
    // The engine thread first: it pins itself, and must not inherit the generator's CPU.
    let (mut engine, ws_url, fixes_url) = match &args.target {
        None => {
            let engine = InProcessEngine::start(jwks.url.clone(), args.engine_cpu)?;
            let url = format!("ws://{}/v1/stream", engine.addr);
            let fixes = format!("http://{}/v1/fixes", engine.addr);
            (Some(engine), url, fixes)
        }
        Some(target) => {
            eprintln!(
                "JWKS for the engine: {} (convoy location-engine --jwks-url {0})",
                jwks.url
            );
            if args.engine_cpu.is_some() {
                eprintln!("--engine-cpu applies to the in-process engine only; ignored");
            }
            let base = target.trim_end_matches('/');
            let ws = if let Some(rest) = base.strip_prefix("https://") {
                format!("wss://{rest}")
            } else if let Some(rest) = base.strip_prefix("http://") {
                format!("ws://{rest}")
            } else {
                base.to_string()
            };
            (None, format!("{ws}/v1/stream"), format!("{base}/v1/fixes"))
        }
    };
    if let Some(cpu) = args.cpu {
        crate::pin::to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    // A socket a user, and as many again for the engine's end when it is in this process.
    let ends = if engine.is_some() { 2 } else { 1 };
    let sockets = args.users + args.http_connections * usize::from(args.http_users > 0);
    crate::pin::raise_fd_limit(sockets * ends + 256).with_context(|| {
        if engine.is_some() {
            "the in-process engine holds the other end of every stream: ask for fewer --users, \
             or run the engine apart (--target)"
        } else {
            "too many --users for this process"
        }
    })?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let report = runtime.block_on(local.run_until(scenario(
        &args,
        world,
        uploaders,
        Rc::new(signer),
        (ws_url, fixes_url),
        engine.as_mut(),
        redis_duration,
    )))?;
    drop(runtime);
    drop(engine);
    drop(jwks);

    std::fs::write(&args.report, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.report.display()))?;
    print!("{}", report.table());
    println!("JSON report: {}", args.report.display());
    Ok(report.passed)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The engine's CPU time so far: its thread's when it is in this process, its process's (from
/// `/proc/PID/stat`, in the kernel's 1/100 s ticks) when `--engine-pid` names it.
async fn engine_cpu(engine: Option<&InProcessEngine>, pid: Option<u32>) -> Option<Duration> {
    if let Some(e) = engine {
        return e.cpu_time().await;
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(Duration::from_millis((ticks(14)? + ticks(15)?) * 10))
}

async fn scenario(
    args: &LocationArgs,
    world: World,
    uploaders: World,
    signer: Rc<protocol::token::Signer>,
    (ws_url, fixes_url): (String, String),
    engine: Option<&mut InProcessEngine>,
    redis_duration: f64,
) -> anyhow::Result<LocationReport> {
    let n = world.walkers.len();
    let uploading = uploaders.walkers.len();
    let groups = world.groups.len() + uploaders.groups.len();
    // The mean size of a fix's group: the members it is read against, the streams that see it.
    let streams_per_fix = world
        .groups
        .iter()
        .map(|g| g.members.len().pow(2))
        .sum::<usize>() as f64
        / n as f64;
    let per_user = args.rate / (n + uploading) as f64;
    let shared = Rc::new(Shared::new(&world.walkers));
    // Redis gets every user, streams' and uploaders'.
    let redis_world = args
        .against_redis
        .is_some()
        .then(|| world.clone().join(uploaders.clone()));
    // The uploaders' tokens (signed before the clock starts).
    let auth = uploaders
        .walkers
        .iter()
        .map(|w| {
            let token = setup::token(&signer, w.id, uploaders.groups[w.group].id);
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("token header")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let counts = Rc::new(uploads::Counts::default());
    let ids: Vec<_> = world
        .walkers
        .iter()
        .map(|w| (w.id, world.groups[w.group].id))
        .collect();

    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr())
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    progress.set_prefix("connecting");

    // Streams. The first alone: the engine fetches the JWKS on the first unknown key id, and
    // refuses other tokens with that id until then. An engine elsewhere may have fetched keys
    // in the last seconds (it refetches at most every 5 s): the first stream is retried.
    let setup_start = Instant::now();
    let mut sinks: Vec<Option<streams::Sink>> = (0..n).map(|_| None).collect();
    let mut failures: Vec<String> = Vec::new();
    let mut failed = 0usize;
    let mut fail = |shared: &Shared, i: usize, e: anyhow::Error| {
        failed += 1;
        if failures.len() < 8 {
            failures.push(format!("user {i}: {e:#}"));
        }
        shared.finish(i);
    };
    let attempts = if args.target.is_some() { 8 } else { 1 };
    for attempt in 1..=attempts {
        let token = setup::token(&signer, ids[0].0, ids[0].1);
        match streams::connect(&ws_url, &token).await {
            Ok((sink, source)) => {
                streams::spawn_reader(&shared, 0, source);
                sinks[0] = Some(sink);
                break;
            }
            Err(e) if attempt == attempts => fail(&shared, 0, e),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    progress.inc(1);
    let gate = Rc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let handles: Vec<_> = (1..n)
        .map(|i| {
            let (gate, signer, url, (user, group)) =
                (Rc::clone(&gate), Rc::clone(&signer), ws_url.clone(), ids[i]);
            tokio::task::spawn_local(async move {
                let _permit = gate.acquire().await?;
                let token = setup::token(&signer, user, group);
                streams::connect(&url, &token).await
            })
        })
        .collect();
    for (i, h) in (1..n).zip(handles) {
        match h.await {
            Ok(Ok((sink, source))) => {
                streams::spawn_reader(&shared, i, source);
                sinks[i] = Some(sink);
            }
            Ok(Err(e)) => fail(&shared, i, e),
            Err(e) => fail(&shared, i, e.into()),
        }
        progress.inc(1);
    }
    let setup_seconds = secs(setup_start.elapsed());
    let connected = n - failed;

    // The open loop.
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let schedule = Schedule {
        start,
        period: Duration::from_secs_f64(1.0 / per_user),
        per_frame: args.fixes_per_frame,
        users: n,
        end,
    };
    shared.measure_from.set(Some(measure_from));
    counts.measure_from.set(Some(measure_from));
    let uploads = (uploading > 0).then(|| {
        tokio::task::spawn_local(uploads::run(
            Rc::clone(&counts),
            uploads::Plan {
                url: fixes_url,
                walkers: uploaders.walkers,
                auth,
                connections: args.http_connections,
            },
            Schedule {
                per_frame: args.http_batch,
                users: uploading,
                ..schedule
            },
        ))
    });
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    for (i, (walker, sink)) in world.walkers.into_iter().zip(sinks).enumerate() {
        if let Some(sink) = sink {
            tokio::task::spawn_local(streams::writer(
                Rc::clone(&shared),
                i,
                walker,
                sink,
                schedule,
                close_rx.clone(),
            ));
        }
    }
    progress.set_prefix("warmup");
    progress.set_length((secs(end - start) * 1000.0) as u64);
    progress.set_position(0);
    let mut cpu0 = None;
    let (mut last, mut last_sent) = (Instant::now(), 0u64);
    loop {
        let now = Instant::now();
        if cpu0.is_none() && now >= measure_from {
            let engine_cpu = engine_cpu(engine.as_deref(), args.engine_pid).await;
            cpu0 = Some((setup::thread_cpu(), engine_cpu));
            progress.set_prefix("measuring");
        }
        if now >= end {
            break;
        }
        if now - last >= Duration::from_millis(500) {
            let sent = shared.sent.get() + counts.sent.get();
            progress.set_message(format!(
                "{:.0} fixes/s sent",
                (sent - last_sent) as f64 / secs(now - last)
            ));
            (last, last_sent) = (now, sent);
        }
        progress.set_position((secs(now.saturating_duration_since(start)) * 1000.0) as u64);
        let milestone = if cpu0.is_none() { measure_from } else { end };
        tokio::time::sleep_until((now + Duration::from_millis(250)).min(milestone).into()).await;
    }

    // Every writer pings after its last fix; the last pong marks the engine caught up.
    progress.set_prefix("draining");
    let guard = Duration::from_secs_f64((2.0 * (args.warmup + args.duration)).max(30.0));
    let _ = tokio::time::timeout(guard, shared.all_finished()).await;
    let mut uploads_error = None;
    let mut uploads_done = uploads.is_none();
    if let Some(task) = uploads {
        match tokio::time::timeout(guard, task).await {
            Ok(Ok(Ok(()))) => uploads_done = true,
            Ok(Ok(Err(e))) => uploads_error = Some(format!("{e:#}")),
            Ok(Err(e)) => uploads_error = Some(e.to_string()),
            Err(_) => uploads_error = Some("uploads unanswered at the end".into()),
        }
    }
    // Caught up: every stream's final ping answered and every upload answered.
    let caught_up = match (shared.barrier_at.get(), counts.last_answer.get()) {
        (Some(s), Some(u)) => Some(s.max(u)),
        (s, None) if uploads_done => s,
        _ => None,
    };
    let measured_until = caught_up.unwrap_or_else(Instant::now).max(end);
    let wall = secs(measured_until - measure_from);
    let own_cpu = setup::thread_cpu();
    let engine_cpu = engine_cpu(engine.as_deref(), args.engine_pid).await;
    shared.closing.set(true);
    let _ = close_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), shared.readers_ended()).await;
    if let Some(e) = engine {
        e.shutdown().await;
    }

    let (own0, engine0) = cpu0.unwrap_or((own_cpu, None));
    let generator_busy_ratio = secs(own_cpu.saturating_sub(own0)) / wall;
    let engine_busy = engine0
        .zip(engine_cpu)
        .map(|(a, b)| secs(b.saturating_sub(a)));
    let sent_measured = shared.sent_measured.get() + counts.sent_measured.get();
    let processed_per_second = sent_measured as f64 / wall;

    let mut redis = None;
    let mut redis_error = None;
    if let (Some(url), Some(world)) = (&args.against_redis, redis_world) {
        progress.set_prefix("redis");
        progress.set_message(String::new());
        match redis_geo::run(
            url,
            world,
            1000.0 / per_user,
            Duration::from_secs_f64(redis_duration),
            args.redis_connections,
            args.redis_pipeline,
        )
        .await
        {
            Ok(r) => redis = Some(r),
            Err(e) => redis_error = Some(format!("{e:#}")),
        }
    }
    progress.finish_and_clear();

    let alert_latency_us = crate::report::Percentiles::of(&shared.alert_latency.borrow());
    let generator_send_lag_us = crate::report::Percentiles::of(&shared.send_lag.borrow());
    let engine_to_redis_ratio = redis
        .as_ref()
        .map(|r: &redis_geo::RedisSide| processed_per_second / r.fixes_per_second.max(1e-9));
    let mut report = LocationReport {
        scenario: Scenario {
            target: args
                .target
                .clone()
                .unwrap_or_else(|| "in-process".to_string()),
            users: n,
            http_users: uploading,
            http_connections: args.http_connections,
            http_batch: args.http_batch,
            groups,
            group_min: args.group_min,
            group_max: args.group_max,
            converging_pairs: args.converging_pairs,
            streams_per_fix,
            rate: args.rate,
            per_user_rate: per_user,
            fixes_per_frame: args.fixes_per_frame,
            warmup_seconds: args.warmup,
            duration_seconds: args.duration,
            seed: args.seed,
            cpu: args.cpu,
            engine_cpu: args.target.is_none().then_some(args.engine_cpu).flatten(),
            max_alert_p99_ms: args.max_alert_p99_ms,
            min_ratio: args.against_redis.is_some().then_some(args.min_ratio),
        },
        connections: Connections {
            planned: n,
            connected,
            failed,
            failures,
            setup_seconds,
            unexpected_closes: shared.unexpected_closes.get(),
            close_reasons: shared.closes.borrow().clone(),
        },
        fixes: Fixes {
            sent: shared.sent.get(),
            sent_measured,
            offered_per_second: (connected + uploading) as f64 * per_user,
            sent_per_second: sent_measured as f64 / args.duration,
            processed_per_second,
            drain_ms: caught_up.map(|at| {
                if at >= end {
                    secs(at - end) * 1000.0
                } else {
                    0.0
                }
            }),
            unanswered_streams: shared.unfinished(),
            skipped: shared.skipped.get() + counts.skipped.get(),
            send_errors: shared.send_errors.get(),
            rejected: shared.rejected.get(),
            rejected_reasons: shared.rejected_reasons.borrow().clone(),
        },
        frames: Frames {
            positions: shared.positions.get(),
            positions_per_second: shared.positions.get() as f64 / args.duration,
            positions_megabytes_per_second: shared.positions_bytes.get() as f64
                / args.duration
                / 1e6,
            unknown: shared.unknown_frames.get(),
        },
        alerts: Alerts {
            unique: shared.alert_ids.borrow().len() as u64,
            near: shared.near.get(),
            apart: shared.apart.get(),
            other: shared.other_alerts.get(),
            deliveries: shared.alert_deliveries.get(),
        },
        uploads: (uploading > 0).then(|| report::Uploads {
            users: uploading,
            connections: args.http_connections,
            batch: args.http_batch,
            sent_measured: counts.sent_measured.get(),
            requests_measured: counts.requests_measured.get(),
            failed_requests: counts.failed_requests.get(),
            failures: counts.reasons.borrow().clone(),
            error: uploads_error,
            latency_us: crate::report::Percentiles::of(&counts.latency.borrow()),
        }),
        alert_latency_us,
        generator_send_lag_us,
        generator_busy_ratio,
        engine: EngineSide {
            busy_ratio: engine_busy.map(|b| b / wall),
            fixes_per_busy_core_second: engine_busy
                .filter(|b| *b > 0.0)
                .map(|b| sent_measured as f64 / b),
        },
        redis,
        engine_to_redis_ratio,
        redis_error,
        violations: Vec::new(),
        passed: false,
    };
    report.judge();
    Ok(report)
}
