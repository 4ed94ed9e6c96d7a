//! `loadtest sfu`: N rooms × (S speakers, L listeners) against a running media node, through the
//! real join path (REST allocation → WHIP → ICE/DTLS/SRTP) with str0m as the client stack.
//!
//! Two threads, both on the core the run is pinned to: the setup thread does the HTTP work and
//! hands each joined client (an `Rtc` and its UDP socket) to the engine, which owns every client
//! and drives them from one `mio` poll loop. Speakers send 50 packets a second of an Opus-sized
//! payload that starts with a [`Stamp`](crate::measure::Stamp) (publisher, counter, send time);
//! listeners measure loss, RFC 3550 jitter and forward latency from it.

mod engine;
mod recv;
pub use engine::Outcome;
mod scrape;
mod setup;

use crate::report::{Report, Thresholds};
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `loadtest sfu`.
#[derive(Debug, Clone, clap::Args)]
pub struct SfuArgs {
    /// Control plane base URL (the node is reached through the WHIP URL it allocates).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub control_plane: String,
    /// Rooms (one group and session each).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Speakers per room (at most 3: above 6 participants the node forwards the 3 loudest).
    #[arg(long, default_value_t = 2)]
    pub speakers: usize,
    /// Listeners per room.
    #[arg(long, default_value_t = 8)]
    pub listeners: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of sending before measuring (speaker detection settles).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait for every joined client to connect (ICE + DTLS).
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Payload bytes per packet (Opus at 32–48 kb/s: 80–120).
    #[arg(long, default_value_t = 120)]
    pub payload: usize,
    /// WHIP joins in flight at once.
    #[arg(long, default_value_t = 16)]
    pub join_concurrency: usize,
    /// Pin the load generator to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Fail (exit 1) above this loss, in percent.
    #[arg(long, default_value_t = 0.1)]
    pub max_loss_percent: f64,
    /// Fail (exit 1) above this p99 forward latency, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    pub max_p99_ms: f64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "loadtest-sfu.json")]
    pub json: PathBuf,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
    /// Listeners hand every datagram to str0m, forwarded audio included (slower: the generator
    /// saturates its core first). By default a listener opens forwarded audio itself with its
    /// connection's SRTP keys (`rtp-fast`) and gives str0m everything else.
    #[arg(long)]
    pub str0m_receive: bool,
    /// The generator polls its sockets without ever sleeping (give it a core of its own). A
    /// sleeping generator is woken by the datagrams the node sends, and on loopback that wake-up
    /// runs on the sender's core: a cost listeners on other hosts never put on the node. Its busy
    /// ratio then counts only the polls that found work.
    #[arg(long)]
    pub spin: bool,
    /// Run the generator's packet thread at this real-time (SCHED_FIFO) priority, 1–99 (needs
    /// CAP_SYS_NICE or root): kernel housekeeping threads otherwise stall its sends for
    /// milliseconds now and then, and the node gets the backlog as one burst.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    pub realtime_priority: Option<u8>,
}

/// Most voices a listener is sent in a room above six participants (the node's default top N).
pub const MAX_SPEAKERS: usize = 3;

/// Speaker or listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Speaker,
    Listener,
}

/// One client of the run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Numbered across the run.
    pub index: usize,
    pub room: u32,
    pub role: Role,
    /// The publisher number of a speaker, numbered across the run.
    pub publisher: Option<u32>,
    /// How many other speakers it should hear.
    pub voices: usize,
}

/// Every client of a run, room by room.
pub fn plan(rooms: usize, speakers: usize, listeners: usize) -> Vec<Plan> {
    let mut plans = Vec::with_capacity(rooms * (speakers + listeners));
    let mut publisher = 0u32;
    for room in 0..rooms {
        for i in 0..speakers + listeners {
            let role = if i < speakers {
                Role::Speaker
            } else {
                Role::Listener
            };
            plans.push(Plan {
                index: plans.len(),
                room: room as u32,
                role,
                publisher: (role == Role::Speaker).then(|| {
                    publisher += 1;
                    publisher - 1
                }),
                voices: match role {
                    Role::Speaker => speakers - 1,
                    Role::Listener => speakers,
                },
            });
        }
    }
    plans
}

/// What the setup thread tells the engine.
#[derive(Debug)]
pub enum ToEngine {
    /// A client joined over WHIP; the node's metrics URL with it.
    Joined(Box<setup::Joined>, String),
    /// A client could not join.
    JoinFailed(String),
    /// Every join was tried.
    SetupDone,
    /// Nothing can be joined (e.g. the control plane is unreachable).
    SetupFailed(String),
}

/// Runs the scenario, writes the JSON report, prints the table; `Ok(false)` when a threshold failed.
pub fn run(args: SfuArgs) -> anyhow::Result<bool> {
    if args.speakers == 0 || args.speakers > MAX_SPEAKERS {
        bail!("--speakers must be 1..={MAX_SPEAKERS}");
    }
    if args.rooms == 0 || args.speakers + args.listeners < 2 {
        bail!("need at least one room of two participants");
    }
    if args.payload < crate::measure::STAMP_LEN || args.payload > 1000 {
        bail!(
            "--payload must be {}..=1000 bytes",
            crate::measure::STAMP_LEN
        );
    }
    if let Some(cpu) = args.cpu {
        crate::pin::to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    crate::pin::raise_fd_limit(args.rooms * (args.speakers + args.listeners) + 256)?;

    let plans = plan(args.rooms, args.speakers, args.listeners);
    let provider = str0m::crypto::from_feature_flags();
    let cert = provider
        .dtls_provider
        .generate_certificate()
        .context("generating a DTLS certificate")?;
    provider.install_process_default();

    let (tx, rx) = std::sync::mpsc::channel();
    let setup_args = args.clone();
    let setup_plans = plans.clone();
    let setup = std::thread::Builder::new()
        .name("loadtest-setup".into())
        .spawn(move || setup::run(setup_args, setup_plans, cert, tx))?;
    let scraper = scrape::Scraper::start()?;
    // The packet thread only: the setup and scrape threads started above keep normal priority.
    if let Some(priority) = args.realtime_priority {
        crate::pin::realtime(priority)?;
    }

    let outcome = engine::Engine::new(&args, plans)?.run(rx, &scraper)?;
    let _ = setup.join();

    let thresholds = Thresholds {
        max_loss_ratio: args.max_loss_percent / 100.0,
        max_p99: Duration::from_secs_f64(args.max_p99_ms / 1000.0),
    };
    let report = Report::new(&args, &outcome, &thresholds);
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("{}", report.table());
    println!("JSON report: {}", args.json.display());
    Ok(report.passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_number_publishers_across_rooms_and_count_voices() {
        let p = plan(2, 2, 3);
        assert_eq!(p.len(), 10);
        let publishers: Vec<_> = p.iter().filter_map(|c| c.publisher).collect();
        assert_eq!(publishers, [0, 1, 2, 3]);
        assert_eq!(p[5].room, 1);
        assert_eq!(p[5].publisher, Some(2));
        assert_eq!((p[0].voices, p[4].voices), (1, 2));
        assert!(p.iter().enumerate().all(|(i, c)| c.index == i));
    }
}
