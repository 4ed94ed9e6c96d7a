//! The glommio shell: one executor pinned per core, each around one [`Shard`] and one UDP socket.
//!
//! This is the only place that reads the clock for the shard or touches its socket. Three local tasks
//! share the shard through `Rc<RefCell<_>>` (one thread, no locks): the receive loop, the command
//! loop (joins and leaves from the HTTP side) and the timer loop. Nothing on the packet path crosses
//! a thread: commands come in on a channel, events go out on another.

use crate::participant::ParticipantKey;
use crate::shard::{Datagram, JoinError, JoinRequest, Joined, Shard, ShardConfig, ShardEvent};
use futures_lite::future;
use glommio::net::UdpSocket;
use glommio::{LocalExecutorBuilder, Placement};
use protocol::api::Moderation;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Largest datagram we read.
const MAX_DATAGRAM: usize = 2048;

/// What the HTTP side asks of a core.
#[derive(Debug)]
pub(crate) enum Command {
    Join {
        req: JoinRequest,
        reply: oneshot::Sender<Result<Joined, JoinError>>,
    },
    Leave {
        participant: ParticipantKey,
        reply: oneshot::Sender<bool>,
    },
    Moderate {
        participant: ParticipantKey,
        action: Moderation,
        reply: oneshot::Sender<bool>,
    },
}

/// Load and traffic counters a core publishes for placement and metrics.
#[derive(Debug, Default)]
pub struct CoreLoad {
    pub rooms: AtomicU32,
    pub participants: AtomicU32,
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub send_errors: AtomicU64,
    pub rtp_in: AtomicU64,
    pub rtp_forwarded: AtomicU64,
    pub unclaimed: AtomicU64,
    pub malformed: AtomicU64,
    /// Time the core spent handling inputs and sending, in nanoseconds.
    pub busy_nanos: AtomicU64,
    /// From a publisher's datagram read to its forwarded copies handed to the kernel.
    pub forward_latency: LatencyHistogram,
    /// NACKs, retransmissions, loss, keyframe requests.
    pub feedback: crate::metrics::FeedbackCounters,
}

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
];

/// A Prometheus-style histogram with fixed buckets, written by one core, read by the scraper.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Non-cumulative count per bucket; the last one is above every bound.
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub count: AtomicU64,
    pub sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// The node's handle on one running core.
#[derive(Debug)]
pub(crate) struct Core {
    pub port: u16,
    pub load: Arc<CoreLoad>,
    pub commands: async_channel::Sender<Command>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

impl Core {
    /// Starts core `index`: binds `bind_ip:port` (0 = any free port), advertises
    /// `advertise_ip:<bound port>`, and reports shard events on `events`.
    pub fn start(
        index: u16,
        bind_ip: IpAddr,
        port: u16,
        advertise_ip: IpAddr,
        events: mpsc::UnboundedSender<(u16, ShardEvent)>,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = async_channel::bounded::<Command>(1024);
        let load = Arc::new(CoreLoad::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<u16, String>>(1);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let thread_load = load.clone();
        let thread = LocalExecutorBuilder::new(Placement::Fixed(usize::from(index) % cpus))
            .name(&format!("media-core-{index}"))
            .io_memory(512 << 10)
            .ring_depth(256)
            .spawn(move || async move {
                let socket = match UdpSocket::bind(SocketAddr::new(bind_ip, port)) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let port = socket.local_addr().map(|a| a.port()).unwrap_or(port);
                let config =
                    ShardConfig::new(index, SocketAddr::new(advertise_ip, port), rand::random());
                let shard = match Shard::new(config, Instant::now()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(port));
                run_core(index, shard, socket, rx, events, thread_load).await;
            })
            .map_err(|e| anyhow::anyhow!("starting media core {index}: {e}"))?;
        let port = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("media core {index} died while starting"))?
            .map_err(|e| anyhow::anyhow!("media core {index}: {e}"))?;
        Ok(Self {
            port,
            load,
            commands: tx,
            thread: Some(thread),
        })
    }

    /// Stops the core and waits for its thread.
    pub fn stop(&mut self) {
        self.commands.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Shared state of one core's tasks.
struct Local {
    index: u16,
    shard: RefCell<Shard>,
    socket: UdpSocket,
    events: mpsc::UnboundedSender<(u16, ShardEvent)>,
    load: Arc<CoreLoad>,
    /// Wakes the timer loop when an input may have moved the shard's deadline earlier.
    rearm: async_channel::Sender<()>,
    /// Datagrams waiting for the socket, in the order the shard produced them.
    outbox: RefCell<VecDeque<Datagram>>,
    /// Whether a task is draining `outbox`: only one does, so datagrams leave in order.
    sending: Cell<bool>,
}

impl Local {
    /// Counts the time since `started` as busy.
    fn busy_since(&self, started: Instant) {
        self.load
            .busy_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Sends what the shard queued, publishes its events and load, and re-arms the timer.
    async fn flush(&self) {
        {
            let mut shard = self.shard.borrow_mut();
            let mut outbox = self.outbox.borrow_mut();
            while let Some(d) = shard.poll_transmit() {
                outbox.push_back(d);
            }
            while let Some(e) = shard.poll_event() {
                let _ = self.events.send((self.index, e));
            }
            self.load
                .rooms
                .store(shard.room_count() as u32, Ordering::Relaxed);
            self.load
                .participants
                .store(shard.participant_count() as u32, Ordering::Relaxed);
            let stats = shard.stats();
            self.load.rtp_in.store(stats.rtp_in, Ordering::Relaxed);
            self.load
                .rtp_forwarded
                .store(stats.rtp_forwarded, Ordering::Relaxed);
            self.load
                .unclaimed
                .store(stats.unclaimed, Ordering::Relaxed);
            self.load
                .malformed
                .store(stats.malformed, Ordering::Relaxed);
            self.load.feedback.store(&stats);
        }
        let _ = self.rearm.try_send(());
        if self.sending.replace(true) {
            // Another task is sending; it takes these too, after what it queued before.
            return;
        }
        loop {
            let Some(d) = self.outbox.borrow_mut().pop_front() else {
                break;
            };
            match self.socket.send_to(&d.contents, d.destination).await {
                Ok(n) => {
                    self.load.datagrams_out.fetch_add(1, Ordering::Relaxed);
                    self.load.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    self.load.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.sending.set(false);
    }
}

async fn run_core(
    index: u16,
    shard: Shard,
    socket: UdpSocket,
    commands: async_channel::Receiver<Command>,
    events: mpsc::UnboundedSender<(u16, ShardEvent)>,
    load: Arc<CoreLoad>,
) {
    let (rearm, rearmed) = async_channel::bounded(1);
    let local = Rc::new(Local {
        index,
        shard: RefCell::new(shard),
        socket,
        events,
        load,
        rearm,
        outbox: RefCell::new(VecDeque::new()),
        sending: Cell::new(false),
    });

    let recv = glommio::spawn_local(receive_loop(local.clone())).detach();
    let timer = glommio::spawn_local(timer_loop(local.clone(), rearmed)).detach();

    // The core lives as long as its command channel is open.
    while let Ok(cmd) = commands.recv().await {
        let started = Instant::now();
        // Flush before answering, so what the caller sees next (metrics, events) includes it.
        match cmd {
            Command::Join { req, reply } => {
                let r = local.shard.borrow_mut().join(Instant::now(), req);
                local.flush().await;
                let _ = reply.send(r);
            }
            Command::Leave { participant, reply } => {
                let r = local.shard.borrow_mut().leave(participant);
                local.flush().await;
                let _ = reply.send(r);
            }
            Command::Moderate {
                participant,
                action,
                reply,
            } => {
                let r = local.shard.borrow_mut().moderate(participant, action);
                local.flush().await;
                let _ = reply.send(r);
            }
        }
        local.busy_since(started);
    }
    recv.cancel();
    timer.cancel();
}

async fn receive_loop(local: Rc<Local>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, source) = match local.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors from earlier sends and the like: keep serving.
            Err(_) => continue,
        };
        let read_at = Instant::now();
        local.load.datagrams_in.fetch_add(1, Ordering::Relaxed);
        local.load.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        let forwarded = {
            let mut shard = local.shard.borrow_mut();
            let before = shard.stats().rtp_forwarded;
            shard.handle_datagram(read_at, source, &buf[..n]);
            shard.stats().rtp_forwarded > before
        };
        local.flush().await;
        if forwarded {
            local.load.forward_latency.observe(read_at.elapsed());
        }
        local.busy_since(read_at);
    }
}

async fn timer_loop(local: Rc<Local>, rearmed: async_channel::Receiver<()>) {
    loop {
        let deadline = local.shard.borrow_mut().poll_timeout();
        let now = Instant::now();
        if deadline > now {
            let sleep = async {
                glommio::timer::sleep(deadline - now).await;
            };
            let woken = async {
                let _ = rearmed.recv().await;
            };
            future::or(sleep, woken).await;
            continue;
        }
        let started = Instant::now();
        local.shard.borrow_mut().handle_timeout(started);
        local.flush().await;
        local.busy_since(started);
    }
}
