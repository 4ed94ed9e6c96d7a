//! The glommio shell: one executor pinned per core, each around one [`Shard`] and one UDP socket.
//!
//! This is the only place that reads the clock for the shard or touches its socket. Three local tasks
//! share the shard through `Rc<RefCell<_>>` (one thread, no locks): the receive loop, the command
//! loop (joins and leaves from the HTTP side) and the timer loop. Nothing on the packet path crosses
//! a thread: commands come in on a channel, events go out on another.

use crate::music::Track;
use crate::participant::ParticipantKey;
use crate::shard::MusicRefusal;
use crate::shard::{Datagram, JoinError, JoinRequest, Joined, Shard, ShardConfig, ShardEvent};
use crate::udp::{BATCH, RecvBatch, SendBatch};
use futures_lite::future;
use glommio::net::UdpSocket;
use glommio::{LocalExecutorBuilder, Placement};
use nix::sched::{CpuSet, sched_getaffinity};
use nix::unistd::Pid;
use protocol::api::Moderation;
use protocol::music::{MusicAction, MusicState};
use protocol::{SessionId, UserId};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Largest datagram we read.
const MAX_DATAGRAM: usize = 2048;
/// How often the receive loop runs due timers while datagrams keep it busy.
const TIMER_GRAIN: std::time::Duration = std::time::Duration::from_millis(1);
/// Socket buffers asked for (the kernel caps them at `net.core.{r,w}mem_max`): a burst of
/// publishers' packets waits here while the core fans out the ones before it.
const SOCKET_BUFFER: usize = 8 << 20;

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
    /// A music action for a room, on a user's behalf (relayed from the REST API).
    Music {
        session: SessionId,
        user: UserId,
        action: MusicAction,
        reply: oneshot::Sender<Result<MusicState, MusicRefusal>>,
    },
    /// A track for the end of a room's queue.
    QueueTrack {
        session: SessionId,
        user: UserId,
        track: Track,
        reply: oneshot::Sender<Result<MusicState, MusicRefusal>>,
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
    /// Whether the core runs at real-time priority (asked for and granted).
    pub realtime: std::sync::atomic::AtomicBool,
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

/// The CPUs this process may run on, in order: its affinity mask (`taskset -c 1 convoy …` puts
/// core 0 on CPU 1), or every CPU when the mask cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    let allowed: Vec<usize> = sched_getaffinity(Pid::from_raw(0))
        .map(|set| {
            (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect()
        })
        .unwrap_or_default();
    if allowed.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).collect()
    } else {
        allowed
    }
}

/// Runs the calling thread under `SCHED_FIFO` at `priority` (1–99): nothing of normal priority
/// (kernel housekeeping threads, the control plane, other processes) preempts it while it has
/// work, so a core's packets never wait out someone else's time slice. Needs `CAP_SYS_NICE` (or
/// root). The kernel still keeps a share of each CPU for normal threads (`sched_rt_runtime_us`),
/// so a saturated core cannot lock its CPU up.
pub fn run_realtime(priority: u8) -> Result<(), String> {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    if !(1..=99).contains(&priority) {
        return Err(format!("real-time priority {priority} is outside 1–99"));
    }
    let value = ThreadPriorityValue::try_from(priority)?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| match e {
        thread_priority::Error::OS(1) => {
            "not permitted (needs CAP_SYS_NICE or root, or an RLIMIT_RTPRIO)".to_string()
        }
        e => e.to_string(),
    })
}

/// A core's UDP socket, with large buffers.
fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer only means earlier drops under a burst.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from(socket))
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
    /// `advertise_ip:<bound port>`, and reports shard events on `events`. With `realtime`, its
    /// thread asks for that `SCHED_FIFO` priority; refused, it warns and runs at normal priority.
    pub fn start(
        index: u16,
        bind_ip: IpAddr,
        port: u16,
        advertise_ip: IpAddr,
        realtime: Option<u8>,
        events: mpsc::UnboundedSender<(u16, ShardEvent)>,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = async_channel::bounded::<Command>(1024);
        let load = Arc::new(CoreLoad::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<u16, String>>(1);
        let cpus = allowed_cpus();
        let cpu = cpus[usize::from(index) % cpus.len()];
        let thread_load = load.clone();
        let thread = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("media-core-{index}"))
            .io_memory(512 << 10)
            .ring_depth(256)
            .spawn(move || async move {
                if let Some(priority) = realtime {
                    match run_realtime(priority) {
                        Ok(()) => thread_load.realtime.store(true, Ordering::Relaxed),
                        Err(e) => tracing::warn!(
                            "media core {index} runs at normal priority: real-time priority \
                             {priority} refused: {e}"
                        ),
                    }
                }
                let socket = match bind(SocketAddr::new(bind_ip, port)) {
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
    /// The deadline the timer loop sleeps until, if it sleeps: a flush wakes it only when the
    /// shard's next deadline comes earlier (waking it per datagram cost a task switch and a new
    /// timer each time).
    armed_for: Cell<Option<Instant>>,
    /// Datagrams waiting for the socket, in the order the shard produced them.
    outbox: RefCell<VecDeque<Datagram>>,
    /// Whether a task is draining `outbox`: only one does, so datagrams leave in order.
    sending: Cell<bool>,
    send_batch: RefCell<SendBatch>,
    /// When the receive loop last looked for due timers.
    timers_checked: Cell<Instant>,
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
        let next = self.shard.borrow_mut().poll_timeout();
        if self.armed_for.get().is_some_and(|armed| next < armed) {
            self.armed_for.set(None);
            let _ = self.rearm.try_send(());
        }
        if self.sending.replace(true) {
            // Another task is sending; it takes these too, after what it queued before.
            return;
        }
        let fd = self.socket.as_raw_fd();
        loop {
            // As many as the kernel takes in one `sendmmsg`, without awaiting.
            let blocked = {
                let mut outbox = self.outbox.borrow_mut();
                if outbox.is_empty() {
                    break;
                }
                let sent = self
                    .send_batch
                    .borrow_mut()
                    .send(fd, outbox.make_contiguous());
                outbox.drain(..sent.datagrams);
                self.load
                    .datagrams_out
                    .fetch_add(sent.datagrams as u64, Ordering::Relaxed);
                self.load
                    .bytes_out
                    .fetch_add(sent.bytes as u64, Ordering::Relaxed);
                if sent.failed {
                    // Unsendable (e.g. no route to that address): drop it, send the rest.
                    outbox.pop_front();
                    self.load.send_errors.fetch_add(1, Ordering::Relaxed);
                }
                sent.would_block
            };
            if !blocked {
                continue;
            }
            // The socket buffer is full: wait for room through glommio, one datagram.
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
        armed_for: Cell::new(None),
        outbox: RefCell::new(VecDeque::new()),
        sending: Cell::new(false),
        send_batch: RefCell::new(SendBatch::default()),
        timers_checked: Cell::new(Instant::now()),
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
            Command::Music {
                session,
                user,
                action,
                reply,
            } => {
                let r = local
                    .shard
                    .borrow_mut()
                    .music(Instant::now(), session, user, &action);
                local.flush().await;
                let _ = reply.send(r);
            }
            Command::QueueTrack {
                session,
                user,
                track,
                reply,
            } => {
                let r = local
                    .shard
                    .borrow_mut()
                    .queue_track(Instant::now(), session, user, track);
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
    let mut batch = RecvBatch::new(MAX_DATAGRAM);
    let fd = local.socket.as_raw_fd();
    loop {
        // Wait for a datagram through glommio...
        let (n, source) = match local.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors from earlier sends and the like: keep serving.
            Err(_) => continue,
        };
        handle(&local, Instant::now(), source, &buf[..n]).await;
        fire_due_timers(&local).await;
        // ...then take what else is queued, a batch per system call, without waiting.
        loop {
            let got = match batch.recv(fd) {
                Ok(0) => break,
                Ok(got) => got,
                // As above: an error belongs to an earlier send; the next read goes on.
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            let read_at = Instant::now();
            for (source, bytes) in batch.datagrams() {
                handle(&local, read_at, source, bytes).await;
            }
            fire_due_timers(&local).await;
            if got < BATCH {
                break;
            }
            // A full batch means more is waiting; let the timer and command loops run first,
            // or a saturated socket would starve them (no RTCP, no joins).
            future::yield_now().await;
        }
    }
}

/// Runs the shard's timeouts that are due. The receive loop calls it between batches: under a
/// steady stream of datagrams the timer loop may not be scheduled for a long while, and RTCP,
/// ICE consent and speaker ranking must not wait for a quiet moment.
///
/// At most once per [`TIMER_GRAIN`]: str0m deadlines that fall due one after another are
/// handled together, which costs far less than one pass per datagram and delays none by more
/// than the grain.
async fn fire_due_timers(local: &Local) {
    let started = Instant::now();
    if started.saturating_duration_since(local.timers_checked.get()) < TIMER_GRAIN {
        return;
    }
    local.timers_checked.set(started);
    let fired = {
        let mut shard = local.shard.borrow_mut();
        let due = shard.poll_timeout() <= started;
        if due {
            shard.handle_timeout(started);
        }
        due
    };
    if fired {
        local.flush().await;
        local.busy_since(started);
    }
}

/// One datagram in: through the shard, its forwarded copies out (sent before the next is read,
/// so a publisher's packet waits for no other publisher's fan-out).
async fn handle(local: &Local, read_at: Instant, source: SocketAddr, bytes: &[u8]) {
    let started = Instant::now();
    local.load.datagrams_in.fetch_add(1, Ordering::Relaxed);
    local
        .load
        .bytes_in
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let forwarded = {
        let mut shard = local.shard.borrow_mut();
        let before = shard.stats().rtp_forwarded;
        shard.handle_datagram(started, source, bytes);
        shard.stats().rtp_forwarded > before
    };
    local.flush().await;
    if forwarded {
        local.load.forward_latency.observe(read_at.elapsed());
    }
    local.busy_since(started);
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
            local.armed_for.set(Some(deadline));
            future::or(sleep, woken).await;
            local.armed_for.set(None);
            continue;
        }
        let started = Instant::now();
        local.shard.borrow_mut().handle_timeout(started);
        local.flush().await;
        local.busy_since(started);
    }
}

#[cfg(test)]
mod tests {
    use super::run_realtime;
    use thread_priority::{RealtimeThreadSchedulePolicy, ThreadSchedulePolicy};

    #[test]
    fn a_core_thread_runs_real_time_or_says_why_not() {
        // On a thread of its own: the test harness's threads keep their priority.
        std::thread::spawn(|| {
            let asked = run_realtime(3);
            let policy = thread_priority::thread_schedule_policy().expect("policy");
            match asked {
                Ok(()) => assert_eq!(
                    policy,
                    ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo)
                ),
                Err(why) => {
                    assert!(why.contains("not permitted"), "{why}");
                    assert!(
                        matches!(policy, ThreadSchedulePolicy::Normal(_)),
                        "{policy:?}"
                    );
                }
            }
        })
        .join()
        .expect("the thread");
        for out_of_range in [0, 100] {
            let why = run_realtime(out_of_range).expect_err("refused");
            assert!(why.contains("outside 1–99"), "{why}");
        }
    }
}
