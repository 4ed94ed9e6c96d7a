//! A media node: its cores, its HTTP side (WHIP, health) and its heartbeat into the registry.

use crate::auth::JoinVerifier;
use crate::runtime::Core;
use crate::shard::ShardEvent;
use crate::signaling::{self, CoreRef, Placement, Signaling};
use protocol::events::{ParticipantChange, SessionEvent};
use protocol::node::{HEARTBEAT_INTERVAL_SECS, NodeRecord, NodeState};
use protocol::{NodeId, ParticipantId};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Participants per core the stress figure is measured against (refined by the loadtest).
const PARTICIPANTS_PER_CORE: f32 = 2_000.0;

/// How a media node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub region: String,
    /// Where the HTTP side (WHIP, health) listens. Port 0 picks a free port.
    pub http_listen: SocketAddr,
    /// Base URL clients reach the HTTP side at; defaults to `http://<http_listen>`.
    pub public_http_url: Option<String>,
    /// Address the UDP sockets bind to.
    pub udp_bind_ip: IpAddr,
    /// Core `i` binds `udp_base_port + i`; 0 picks free ports.
    pub udp_base_port: u16,
    /// Address put in ICE candidates: the address clients can reach this node at.
    pub advertise_ip: IpAddr,
    /// Number of cores (executors) to run.
    pub cores: usize,
    /// The control plane's JWKS, for join tokens.
    pub jwks_url: String,
    /// Run each media core's thread under `SCHED_FIFO` at this priority (1–99; needs
    /// `CAP_SYS_NICE`). `None`: normal priority.
    pub realtime_priority: Option<u8>,
}

impl NodeConfig {
    /// Defaults for one machine: loopback everywhere, ports 8090 and 40000+core, all cores.
    pub fn local(node_id: NodeId, jwks_url: String) -> Self {
        Self {
            node_id,
            region: "local".into(),
            http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8090)),
            public_http_url: None,
            udp_bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            udp_base_port: 40_000,
            advertise_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            jwks_url,
            realtime_priority: None,
        }
    }
}

/// Called with the node's record at start and every heartbeat.
pub type Heartbeat = Arc<dyn Fn(NodeRecord) + Send + Sync>;

/// Called with every session event (participant joined, left, mute changed), in order.
pub type EventSink = Arc<dyn Fn(SessionEvent) + Send + Sync>;

/// Where a node reports to: the registry and the control plane.
#[derive(Clone, Default)]
pub struct Hooks {
    pub heartbeat: Option<Heartbeat>,
    pub events: Option<EventSink>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("heartbeat", &self.heartbeat.is_some())
            .field("events", &self.events.is_some())
            .finish()
    }
}

/// A running media node.
pub struct MediaNode {
    record: Arc<Mutex<NodeRecord>>,
    signaling: Arc<Signaling>,
    heartbeat: Option<Heartbeat>,
    participants: watch::Receiver<usize>,
    http_addr: SocketAddr,
    cores: Vec<Core>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for MediaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaNode")
            .field("http_addr", &self.http_addr)
            .field("cores", &self.cores.len())
            .finish_non_exhaustive()
    }
}

impl MediaNode {
    /// Starts the cores, the HTTP side and the heartbeat. Call from within a tokio runtime.
    pub async fn start(config: NodeConfig, hooks: Hooks) -> anyhow::Result<Self> {
        let heartbeat = hooks.heartbeat;
        anyhow::ensure!(config.cores >= 1, "a media node needs at least one core");
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut cores = Vec::with_capacity(config.cores);
        for i in 0..config.cores {
            let index = u16::try_from(i)?;
            let port = if config.udp_base_port == 0 {
                0
            } else {
                config
                    .udp_base_port
                    .checked_add(index)
                    .ok_or_else(|| anyhow::anyhow!("UDP port out of range"))?
            };
            cores.push(Core::start(
                index,
                config.udp_bind_ip,
                port,
                config.advertise_ip,
                config.realtime_priority,
                events_tx.clone(),
            )?);
        }
        drop(events_tx);

        let listener = tokio::net::TcpListener::bind(config.http_listen).await?;
        let http_addr = listener.local_addr()?;
        let http_url = config
            .public_http_url
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}"));

        let signaling = Arc::new(Signaling {
            verifier: JoinVerifier::new(config.node_id.to_string(), config.jwks_url.clone()),
            cores: cores
                .iter()
                .map(|c| CoreRef {
                    commands: c.commands.clone(),
                    load: c.load.clone(),
                })
                .collect(),
            placement: Mutex::new(Placement::default()),
            draining: AtomicBool::new(false),
            transcodes: tokio::sync::Semaphore::new(signaling::TRANSCODES_AT_ONCE),
        });
        if let Err(e) = signaling.verifier.refresh().await {
            tracing::warn!(error = %e, url = %config.jwks_url, "JWKS not loaded yet; will retry on first join");
        }

        let record = Arc::new(Mutex::new(NodeRecord {
            id: config.node_id.clone(),
            region: config.region.clone(),
            http_url,
            udp_ports: cores.iter().map(|c| c.port).collect(),
            version: env!("CARGO_PKG_VERSION").into(),
            cores: cores.len() as u32,
            stress: 0.0,
            state: NodeState::Serving,
        }));

        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let (count_tx, participants) = watch::channel(0usize);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(track_events(
            events_rx,
            signaling.clone(),
            count_tx,
            config.node_id.clone(),
            hooks.events,
        )));
        if let Some(beat) = heartbeat.clone() {
            let record = record.clone();
            let sig = signaling.clone();
            let mut stop = shutdown.subscribe();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(HEARTBEAT_INTERVAL_SECS));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    let participants: u32 = sig
                        .cores
                        .iter()
                        .map(|c| c.load.participants.load(Ordering::Relaxed))
                        .sum();
                    let rec = {
                        let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                        r.stress = (participants as f32
                            / (PARTICIPANTS_PER_CORE * sig.cores.len() as f32))
                            .min(1.0);
                        r.clone()
                    };
                    beat(rec);
                }
            }));
        }
        let app = signaling::router(signaling.clone());
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown_rx.changed().await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "media node HTTP server failed");
            }
        }));

        Ok(Self {
            record,
            signaling,
            heartbeat,
            participants,
            http_addr,
            cores,
            shutdown,
            tasks,
        })
    }

    /// The node's current registry record.
    pub fn record(&self) -> NodeRecord {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts draining: the registry is told at once, readiness fails, joins to rooms this node
    /// does not host are refused; calls in progress go on.
    pub fn drain(&self) {
        self.signaling.draining.store(true, Ordering::Relaxed);
        let rec = {
            let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
            r.state = NodeState::Draining;
            r.clone()
        };
        if let Some(beat) = &self.heartbeat {
            beat(rec);
        }
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.signaling.draining.load(Ordering::Relaxed)
    }

    /// Participants on the node (joining or connected).
    pub fn participant_count(&self) -> usize {
        *self.participants.borrow()
    }

    /// Resolves when no participant is left on the node.
    pub async fn empty(&self) {
        let mut rx = self.participants.clone();
        let _ = rx.wait_for(|&n| n == 0).await;
    }

    /// Where the HTTP side listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The UDP port of each core.
    pub fn udp_ports(&self) -> Vec<u16> {
        self.cores.iter().map(|c| c.port).collect()
    }

    /// Stops serving and waits for the cores to exit.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let mut cores = std::mem::take(&mut self.cores);
        let _ = tokio::task::spawn_blocking(move || {
            for c in &mut cores {
                c.stop();
            }
        })
        .await;
    }
}

/// Keeps the placement in step with what the cores report, counts participants, and reports
/// session events.
async fn track_events(
    mut events: mpsc::UnboundedReceiver<(u16, ShardEvent)>,
    sig: Arc<Signaling>,
    count: watch::Sender<usize>,
    node: NodeId,
    sink: Option<EventSink>,
) {
    // Event times are strictly increasing: the control plane orders a participant's mute
    // changes by them, and two in one millisecond must not tie.
    let mut last_ms = 0u64;
    while let Some((core, e)) = events.recv().await {
        let mut report = |session, participant, user, change| {
            if let Some(sink) = &sink {
                last_ms = unix_ms().max(last_ms + 1);
                sink(SessionEvent {
                    node: node.clone(),
                    session,
                    participant,
                    user,
                    at_ms: last_ms,
                    change,
                });
            }
        };
        match e {
            ShardEvent::Joined {
                session,
                participant,
                id,
                user,
            } => {
                count.send_modify(|n| *n += 1);
                tracing::info!(core, %session, participant, %id, %user, "participant joined");
                report(session, id, user, ParticipantChange::Joined);
            }
            ShardEvent::Connected {
                session,
                participant,
            } => tracing::info!(core, %session, participant, "participant connected"),
            ShardEvent::Left {
                session,
                participant,
                id,
                user,
                reason,
            } => {
                count.send_modify(|n| *n = n.saturating_sub(1));
                tracing::info!(core, %session, participant, %id, ?reason, "participant left");
                sig.placement
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .left(core, participant);
                let reason = reason.as_str().to_string();
                report(session, id, user, ParticipantChange::Left { reason });
            }
            ShardEvent::Muted {
                session,
                participant,
                id,
                user,
                microphone,
                speaker,
            } => {
                tracing::info!(core, %session, participant, microphone, speaker, "mute changed");
                report(
                    session,
                    id,
                    user,
                    ParticipantChange::Muted {
                        microphone,
                        speaker,
                    },
                );
            }
            ShardEvent::RoomClosed { session } => {
                tracing::info!(core, %session, "room closed");
            }
            ShardEvent::Speakers { session, speakers } => {
                tracing::debug!(core, %session, ?speakers, "active speakers");
            }
            ShardEvent::Music {
                session,
                user,
                participant,
                mut state,
                at,
            } => {
                tracing::info!(core, %session, %user, playing = state.playing, "music changed");
                state.at_ms = Some(unix_ms_at(at));
                let participant = participant.unwrap_or(ParticipantId::from_uuid(Uuid::nil()));
                report(
                    session,
                    participant,
                    user,
                    ParticipantChange::Music { state },
                );
            }
        }
    }
}

/// Unix milliseconds of an instant near now.
fn unix_ms_at(at: std::time::Instant) -> u64 {
    let (now, ms) = (std::time::Instant::now(), unix_ms());
    if at >= now {
        ms + (at - now).as_millis() as u64
    } else {
        ms.saturating_sub((now - at).as_millis() as u64)
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
