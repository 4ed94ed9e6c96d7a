//! The packet side of `loadtest sfu`: every client's `Rtc` and socket, driven from one `mio` poll
//! loop on one thread (the shape of a media node's core, as a client).

use super::recv;
use super::scrape::Scraper;
use super::setup::Joined;
use super::{Plan, Role, SfuArgs, ToEngine};
use crate::measure::{self, Stamp, StreamStats};
use anyhow::bail;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use rtp_fast::SrtpRx;
use rtp_fast::rtp;
use rtp_fast::srtp::estimate_index;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};
use str0m::media::{Frequency, MediaData, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

/// One Opus frame.
const PERIOD: Duration = Duration::from_millis(20);
/// Sockets read (or timers fired) between looks at the send schedule: a poll that returns a
/// thousand readable listeners must not hold back the speakers' packets until it is through,
/// or the node sees bursts no set of independent clients would send.
const SEND_CHECK: usize = 32;
/// The send timer's token (clients are numbered from 0).
const SEND_TIMER: Token = Token(usize::MAX);
/// How long listeners keep counting after the speakers stop.
const DRAIN: Duration = Duration::from_secs(1);
/// The audio level speakers send (dBov, RFC 6464): clearly voice.
const LEVEL: i8 = -20;
/// Failure messages kept for the report.
const MAX_FAILURES_KEPT: usize = 20;

struct Client {
    plan: Plan,
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    send_mid: Option<Mid>,
    connected: bool,
    failed: Option<String>,
    deadline: Instant,
    /// Next counter a speaker sends.
    counter: u32,
    /// What it heard, by publisher.
    streams: Vec<(u32, StreamStats)>,
    /// Its connection's SRTP keys (filled by the handshake).
    keys: rtp_fast::KeyCapture,
    /// Opens forwarded audio without str0m, once the keys exist (unless `--str0m-receive`).
    rx: Option<SrtpRx>,
    /// Per SSRC it receives: the highest SRTP packet index and the extended RTP timestamp.
    incoming: Vec<(u32, u64, u64)>,
}

/// Measurement state shared by all clients.
struct Ctx {
    /// When the datagram being handled was read, ns since the Unix epoch.
    read_ns: u64,
    /// When it reached its socket (the kernel's stamp; the read time without one).
    arrived_ns: u64,
    /// Per publisher: its first counter inside the measurement (`u32::MAX` before it starts).
    first: Vec<u32>,
    latency: Histogram<u64>,
    read_latency: Histogram<u64>,
    jitter: Histogram<u64>,
    send_lag: Histogram<u64>,
    datagrams_in: u64,
    datagrams_out: u64,
    send_errors: u64,
    foreign: u64,
    own_echo: u64,
    packets_in: u64,
    /// Forwarded packets that failed SRTP authentication on the fast receive path.
    unauthentic: u64,
    /// Scratch for a decrypted packet.
    plain: Vec<u8>,
    /// Room for a read's receive stamp.
    stamp: Vec<u8>,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    pub planned: usize,
    pub joined: usize,
    pub connected: usize,
    pub failed: usize,
    pub failures: Vec<String>,
    /// (listener, publisher) pairs between connected clients.
    pub streams: u64,
    /// Streams that delivered at least one measured packet.
    pub streams_heard: u64,
    pub packets_expected: u64,
    pub packets_received: u64,
    pub worst_stream_loss: f64,
    pub reordered: u64,
    /// Forward latency, send to the listener's socket (kernel receive stamp), µs.
    pub latency: Histogram<u64>,
    /// Send to the generator's read of it, µs: the above plus the generator's read backlog.
    pub read_latency: Histogram<u64>,
    /// RFC 3550 jitter estimates after each packet, µs.
    pub jitter: Histogram<u64>,
    /// How late the load generator's own sends were, µs (its saturation shows here).
    pub send_lag: Histogram<u64>,
    pub measured: Duration,
    /// Share of the measurement the load generator spent outside its poll wait.
    pub generator_busy: f64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub send_errors: u64,
    pub foreign: u64,
    pub own_echo: u64,
    /// Forwarded packets whose SRTP authentication failed (fast receive path).
    pub unauthentic: u64,
    /// The node's `/metrics` at the start and the end of the measurement.
    pub node_before: Option<String>,
    pub node_after: Option<String>,
}

enum Phase {
    Joining,
    Connecting { until: Instant },
    Warmup { until: Instant },
    Measuring { from: Instant, until: Instant },
    Draining { until: Instant, measured: Duration },
}

/// The engine: clients, their timers and the speakers' send schedule.
pub struct Engine {
    args: SfuArgs,
    plans: Vec<Plan>,
    poll: Poll,
    /// Wakes the poll at the next send to the microsecond: `epoll_wait` counts its timeout in
    /// whole milliseconds (rounded up), which sent the speakers' packets in 1 ms bursts.
    send_timer: TimerFd,
    clients: Vec<Client>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Speakers' next sends, in time order (every speaker has the same period).
    sends: VecDeque<(Instant, usize)>,
    ctx: Ctx,
    failures: Vec<String>,
    failed: usize,
    metrics_url: Option<String>,
    progress: ProgressBar,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(args: &SfuArgs, plans: Vec<Plan>) -> anyhow::Result<Self> {
        let publishers = plans.iter().filter(|p| p.publisher.is_some()).count();
        let progress = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(Some(plans.len() as u64), ProgressDrawTarget::stderr())
        };
        progress.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>10} [{bar:30}] {pos}/{len} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        progress.set_prefix("joining");
        let poll = Poll::new()?;
        let send_timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK)?;
        poll.registry().register(
            &mut SourceFd(&send_timer.as_fd().as_raw_fd()),
            SEND_TIMER,
            Interest::READABLE,
        )?;
        Ok(Self {
            args: args.clone(),
            plans,
            poll,
            send_timer,
            clients: Vec::new(),
            timers: BinaryHeap::new(),
            sends: VecDeque::new(),
            ctx: Ctx {
                read_ns: 0,
                arrived_ns: 0,
                first: vec![u32::MAX; publishers],
                latency: measure::micros_histogram(),
                read_latency: measure::micros_histogram(),
                jitter: measure::micros_histogram(),
                send_lag: measure::micros_histogram(),
                datagrams_in: 0,
                datagrams_out: 0,
                send_errors: 0,
                foreign: 0,
                own_echo: 0,
                packets_in: 0,
                unauthentic: 0,
                plain: Vec::with_capacity(2048),
                stamp: recv::stamp_buffer(),
            },
            failures: Vec::new(),
            failed: 0,
            metrics_url: None,
            progress,
        })
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.failures.len() < MAX_FAILURES_KEPT {
            self.failures.push(why);
        }
    }

    /// Runs every phase; returns what was measured.
    pub fn run(mut self, rx: Receiver<ToEngine>, scraper: &Scraper) -> anyhow::Result<Outcome> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 2048];
        let mut phase = Phase::Joining;
        let mut setup_done = false;
        let mut scrape_before = None;
        let mut scrape_after = None;
        let mut busy = Duration::ZERO;
        let mut last_progress = Instant::now();
        let mut last_packets = 0u64;

        loop {
            // Joined clients, from the setup thread.
            if !setup_done {
                loop {
                    match rx.try_recv() {
                        Ok(ToEngine::Joined(j, url)) => {
                            self.metrics_url.get_or_insert(url);
                            self.add(*j)?;
                        }
                        Ok(ToEngine::JoinFailed(why)) => self.fail(why),
                        Ok(ToEngine::SetupFailed(why)) => bail!("setup failed: {why}"),
                        Ok(ToEngine::SetupDone) | Err(TryRecvError::Disconnected) => {
                            setup_done = true;
                            break;
                        }
                        Err(TryRecvError::Empty) => break,
                    }
                }
            }

            let now = Instant::now();
            // Phase changes.
            match phase {
                Phase::Joining if setup_done => {
                    if self.clients.is_empty() {
                        bail!("no client joined: {}", self.failures.join("; "));
                    }
                    phase = Phase::Connecting {
                        until: now + Duration::from_secs_f64(self.args.connect_timeout),
                    };
                    self.progress.set_prefix("connecting");
                    self.progress.set_length(self.clients.len() as u64);
                }
                Phase::Connecting { until } => {
                    let pending = self
                        .clients
                        .iter()
                        .filter(|c| !c.connected && c.failed.is_none())
                        .count();
                    if pending == 0 || now >= until {
                        for i in 0..self.clients.len() {
                            let c = &mut self.clients[i];
                            if !c.connected && c.failed.is_none() {
                                c.failed = Some("did not connect in time".into());
                                let why = format!("client {}: did not connect", c.plan.index);
                                self.fail(why);
                            }
                        }
                        self.start_sending(now);
                        phase = Phase::Warmup {
                            until: now + Duration::from_secs_f64(self.args.warmup),
                        };
                        self.progress.set_prefix("warmup");
                        self.progress.set_length(0);
                    }
                }
                Phase::Warmup { until } if now >= until => {
                    for c in &self.clients {
                        if let Some(p) = c.plan.publisher {
                            self.ctx.first[p as usize] = c.counter;
                        }
                    }
                    scrape_before = self.metrics_url.as_deref().map(|u| scraper.fetch(u));
                    let until = now + Duration::from_secs_f64(self.args.duration);
                    phase = Phase::Measuring { from: now, until };
                    busy = Duration::ZERO;
                    self.progress.set_prefix("measuring");
                    self.progress
                        .set_length((self.args.duration * 1000.0).round() as u64);
                }
                Phase::Measuring { from, until } if now >= until => {
                    self.sends.clear();
                    scrape_after = self.metrics_url.as_deref().map(|u| scraper.fetch(u));
                    phase = Phase::Draining {
                        until: now + DRAIN,
                        measured: now - from,
                    };
                    self.progress.set_prefix("draining");
                }
                Phase::Draining { until, measured } if now >= until => {
                    self.progress.finish_and_clear();
                    let wait = |r: Option<Receiver<Result<String, String>>>| {
                        r.and_then(|r| r.recv_timeout(Duration::from_secs(5)).ok())
                            .and_then(Result::ok)
                    };
                    let before = wait(scrape_before.take());
                    let after = wait(scrape_after.take());
                    let generator_busy = busy.as_secs_f64() / measured.as_secs_f64();
                    return Ok(self.outcome(measured, generator_busy, before, after));
                }
                _ => {}
            }

            // Progress, a few times a second.
            if now - last_progress >= Duration::from_millis(250) {
                let rate = (self.ctx.packets_in - last_packets) as f64
                    / (now - last_progress).as_secs_f64();
                last_packets = self.ctx.packets_in;
                last_progress = now;
                match phase {
                    Phase::Joining => self.progress.set_position(self.clients.len() as u64),
                    Phase::Connecting { .. } => self
                        .progress
                        .set_position(self.clients.iter().filter(|c| c.connected).count() as u64),
                    Phase::Measuring { from, .. } => {
                        self.progress.set_position((now - from).as_millis() as u64)
                    }
                    _ => {}
                }
                self.progress.set_message(format!(
                    "{:.0} packets/s received, {} failed",
                    rate, self.failed
                ));
            }

            // Wait for packets, the next timer or the next send.
            let mut next = now + Duration::from_millis(if setup_done { 50 } else { 5 });
            if let Some(Reverse((t, _))) = self.timers.peek() {
                next = next.min(*t);
            }
            if let Some((t, _)) = self.sends.front() {
                next = next.min(*t);
            }
            let wait = if self.args.spin {
                Duration::ZERO
            } else {
                next.saturating_duration_since(now)
            };
            // A send comes first: the timer wakes the poll at it, not up to 1 ms after.
            let send_next = self.sends.front().is_some_and(|&(t, _)| t <= next);
            if send_next && !wait.is_zero() {
                let at = TimeSpec::from(wait.max(Duration::from_micros(1)));
                self.send_timer
                    .set(Expiration::OneShot(at), TimerSetTimeFlags::empty())?;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != ErrorKind::Interrupted
            {
                return Err(e.into());
            }
            let woke = Instant::now();

            for (k, ev) in events.iter().enumerate() {
                if ev.token() == SEND_TIMER {
                    // Expired (or re-armed since): nothing to read but the count.
                    let _ = self.send_timer.wait();
                    continue;
                }
                let i = ev.token().0;
                self.read_all(i, &mut buf);
                if k % SEND_CHECK == SEND_CHECK - 1 {
                    self.send_due();
                }
            }
            let fired = self.fire_timers();
            let sent = self.send_due();
            let worked = !self.args.spin || !events.is_empty() || fired + sent > 0;
            if worked && matches!(phase, Phase::Measuring { .. }) {
                busy += woke.elapsed();
            }
        }
    }

    /// Takes over a joined client and starts its ICE.
    fn add(&mut self, j: Joined) -> anyhow::Result<()> {
        let i = self.clients.len();
        let local = j.socket.local_addr()?;
        let mut socket = UdpSocket::from_std(j.socket);
        self.poll
            .registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        let now = Instant::now();
        self.clients.push(Client {
            plan: j.plan,
            rtc: j.rtc,
            socket,
            local,
            send_mid: j.send_mid,
            connected: false,
            failed: None,
            deadline: now,
            counter: 0,
            streams: Vec::new(),
            keys: j.keys,
            rx: None,
            incoming: Vec::new(),
        });
        self.timers.push(Reverse((now, i)));
        Ok(())
    }

    /// Reads client `i`'s socket until it would block.
    fn read_all(&mut self, i: usize, buf: &mut [u8]) {
        loop {
            let c = &mut self.clients[i];
            let (n, source, arrived) = match recv::recv_stamped(&c.socket, buf, &mut self.ctx.stamp)
            {
                Ok(d) => (d.len, d.source, d.arrived_ns),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP port unreachable and the like, from an earlier send.
                Err(_) => continue,
            };
            self.ctx.datagrams_in += 1;
            if c.failed.is_some() {
                continue;
            }
            let now = Instant::now();
            self.ctx.read_ns = recv::wall_ns();
            self.ctx.arrived_ns = arrived.unwrap_or(self.ctx.read_ns);
            if !self.args.str0m_receive && c.connected && receive_fast(&mut self.ctx, c, &buf[..n])
            {
                continue;
            }
            let Ok(receive) = Receive::new(Protocol::Udp, source, c.local, &buf[..n]) else {
                self.ctx.foreign += 1;
                continue;
            };
            if let Err(e) = c.rtc.handle_input(Input::Receive(now, receive)) {
                self.client_failed(i, format!("input: {e}"));
                continue;
            }
            self.drain(i);
        }
    }

    fn client_failed(&mut self, i: usize, why: String) {
        let c = &mut self.clients[i];
        if c.failed.is_none() {
            let msg = format!("client {} (room {}): {why}", c.plan.index, c.plan.room);
            c.failed = Some(why);
            self.fail(msg);
        }
    }

    /// Polls client `i`'s `Rtc` until it names its next timeout.
    fn drain(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let before = c.deadline;
        let mut failure = None;
        loop {
            match c.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    c.deadline = t;
                    break;
                }
                Ok(Output::Transmit(t)) => match c.socket.send_to(&t.contents, t.destination) {
                    Ok(_) => self.ctx.datagrams_out += 1,
                    Err(_) => self.ctx.send_errors += 1,
                },
                Ok(Output::Event(Event::Connected)) => c.connected = true,
                Ok(Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                ))) => {
                    failure = Some("ICE disconnected".to_string());
                }
                Ok(Output::Event(Event::MediaData(d))) => on_media(&mut self.ctx, c, &d),
                Ok(Output::Event(_)) => {}
                Err(e) => {
                    failure = Some(format!("rtc: {e}"));
                    break;
                }
            }
        }
        if c.deadline != before {
            self.timers.push(Reverse((c.deadline, i)));
        }
        if let Some(why) = failure {
            self.client_failed(i, why);
        }
    }

    /// Hands due timeouts to their `Rtc`s; returns how many fired.
    fn fire_timers(&mut self) -> usize {
        let now = Instant::now();
        let mut fired = 0;
        while let Some(&Reverse((t, i))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            fired += 1;
            if fired % SEND_CHECK == 0 {
                self.send_due();
            }
            let c = &mut self.clients[i];
            if c.deadline != t || c.failed.is_some() {
                continue;
            }
            if let Err(e) = c.rtc.handle_input(Input::Timeout(now)) {
                self.client_failed(i, format!("timeout: {e}"));
                continue;
            }
            self.drain(i);
        }
        fired
    }

    /// Spreads the connected speakers' sends evenly over one period.
    fn start_sending(&mut self, now: Instant) {
        let speakers: Vec<usize> = (0..self.clients.len())
            .filter(|&i| {
                let c = &self.clients[i];
                c.plan.role == Role::Speaker && c.connected && c.failed.is_none()
            })
            .collect();
        let n = speakers.len().max(1) as u32;
        for (k, i) in speakers.into_iter().enumerate() {
            self.sends.push_back((now + PERIOD * k as u32 / n, i));
        }
    }

    /// Sends every speaker's due packet; returns how many were due.
    fn send_due(&mut self) -> usize {
        let now = Instant::now();
        let mut due = 0;
        while let Some(&(t, i)) = self.sends.front() {
            if t > now {
                break;
            }
            due += 1;
            self.sends.pop_front();
            measure::record(&mut self.ctx.send_lag, (now - t).as_micros() as u64);
            self.send(i, now);
            if self.clients[i].failed.is_none() {
                self.sends.push_back((t + PERIOD, i));
            }
        }
        due
    }

    fn send(&mut self, i: usize, now: Instant) {
        let payload_len = self.args.payload;
        let c = &mut self.clients[i];
        let (Some(mid), Some(publisher)) = (c.send_mid, c.plan.publisher) else {
            return;
        };
        let mut payload = vec![0u8; payload_len];
        Stamp {
            publisher,
            counter: c.counter,
            sent_ns: recv::wall_ns(),
        }
        .write(&mut payload);
        let rtp_time = MediaTime::new(u64::from(c.counter) * 960, Frequency::FORTY_EIGHT_KHZ);
        c.counter += 1;
        let Some(writer) = c.rtc.writer(mid) else {
            self.client_failed(i, "no writer for its m-line".into());
            return;
        };
        let Some(pt) = writer.payload_params().next().map(|p| p.pt()) else {
            self.client_failed(i, "no payload type negotiated".into());
            return;
        };
        if let Err(e) = writer
            .audio_level(LEVEL, true)
            .write(pt, now, rtp_time, payload)
        {
            self.client_failed(i, format!("write: {e}"));
            return;
        }
        // Let the pacer release it now, as a client sending in real time would.
        if let Err(e) = c.rtc.handle_input(Input::Timeout(now)) {
            self.client_failed(i, format!("timeout: {e}"));
            return;
        }
        self.drain(i);
    }

    fn outcome(
        self,
        measured: Duration,
        generator_busy: f64,
        node_before: Option<String>,
        node_after: Option<String>,
    ) -> Outcome {
        // Per publisher: how many it sent inside the measurement.
        let mut sent = vec![0u64; self.ctx.first.len()];
        let mut publisher_ok = vec![false; self.ctx.first.len()];
        for c in &self.clients {
            if let Some(p) = c.plan.publisher {
                let first = self.ctx.first[p as usize];
                if first != u32::MAX {
                    sent[p as usize] = u64::from(c.counter.saturating_sub(first));
                }
                publisher_ok[p as usize] = c.failed.is_none();
            }
        }
        let mut room_publishers: Vec<Vec<u32>> = Vec::new();
        for p in &self.plans {
            if let Some(publisher) = p.publisher {
                let room = p.room as usize;
                if room_publishers.len() <= room {
                    room_publishers.resize(room + 1, Vec::new());
                }
                room_publishers[room].push(publisher);
            }
        }
        let (mut streams, mut heard, mut expected, mut received, mut reordered) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut worst = 0.0f64;
        for c in self.clients.iter().filter(|c| c.failed.is_none()) {
            let Some(publishers) = room_publishers.get(c.plan.room as usize) else {
                continue;
            };
            for &p in publishers {
                if Some(p) == c.plan.publisher || !publisher_ok[p as usize] {
                    continue;
                }
                streams += 1;
                let want = sent[p as usize];
                let got = c
                    .streams
                    .iter()
                    .find(|(q, _)| *q == p)
                    .map(|(_, s)| s)
                    .cloned()
                    .unwrap_or_default();
                if got.received > 0 {
                    heard += 1;
                }
                expected += want;
                received += got.received.min(want);
                reordered += got.reordered;
                worst = worst.max(measure::loss_ratio(want, got.received));
            }
        }
        let connected = self.clients.iter().filter(|c| c.connected).count();
        Outcome {
            planned: self.plans.len(),
            joined: self.clients.len(),
            connected,
            failed: self.failed,
            failures: self.failures,
            streams,
            streams_heard: heard,
            packets_expected: expected,
            packets_received: received,
            worst_stream_loss: worst,
            reordered,
            latency: self.ctx.latency,
            read_latency: self.ctx.read_latency,
            jitter: self.ctx.jitter,
            send_lag: self.ctx.send_lag,
            measured,
            generator_busy,
            datagrams_in: self.ctx.datagrams_in,
            datagrams_out: self.ctx.datagrams_out,
            send_errors: self.ctx.send_errors,
            foreign: self.ctx.foreign,
            own_echo: self.ctx.own_echo,
            unauthentic: self.ctx.unauthentic,
            node_before,
            node_after,
        }
    }
}

/// Opens a forwarded audio packet with the client's own SRTP keys and accounts it, as str0m
/// would have delivered it. Returns `false` for what str0m must handle (anything but RTP, or
/// before the keys exist).
fn receive_fast(ctx: &mut Ctx, c: &mut Client, datagram: &[u8]) -> bool {
    let Some(parsed) = rtp::parse_header(datagram) else {
        return false;
    };
    if c.rx.is_none() {
        let Some(keys) = c.keys.keys() else {
            return false;
        };
        match SrtpRx::new(keys, &rtp_fast::capture::crypto_provider()) {
            Ok(rx) => c.rx = Some(rx),
            Err(_) => return false,
        }
    }
    let Some(rx) = c.rx.as_mut() else {
        return false;
    };
    let h = parsed.header;
    let k = match c.incoming.iter().position(|s| s.0 == h.ssrc) {
        Some(k) => k,
        None => {
            c.incoming
                .push((h.ssrc, u64::from(h.seq), u64::from(h.timestamp)));
            c.incoming.len() - 1
        }
    };
    let (_, highest, ext_ts) = c.incoming[k];
    let index = estimate_index(Some(highest), h.seq);
    ctx.plain.clear();
    if rx
        .unprotect(datagram, parsed.header_len, h.ssrc, index, &mut ctx.plain)
        .is_err()
    {
        // Counted, and not accounted: loss shows it.
        ctx.unauthentic += 1;
        return true;
    }
    // The timestamp extended like the index: the closest of the wraps around the last one.
    let ts = {
        let base = ext_ts & !0xffff_ffff;
        [base.wrapping_sub(1 << 32), base, base + (1 << 32)]
            .into_iter()
            .map(|b| b | u64::from(h.timestamp))
            .min_by_key(|t| t.abs_diff(ext_ts))
            .unwrap_or(u64::from(h.timestamp))
    };
    if index >= highest {
        c.incoming[k] = (h.ssrc, index, ts);
    }
    let plain = std::mem::take(&mut ctx.plain);
    account(ctx, c, &plain[parsed.header_len..], ts);
    ctx.plain = plain;
    true
}

/// A listener got a packet from str0m: account it.
fn on_media(ctx: &mut Ctx, c: &mut Client, d: &MediaData) {
    let rtp_time = d.time.rebase(Frequency::FORTY_EIGHT_KHZ).numer();
    account(ctx, c, &d.data, rtp_time);
}

/// A listener got a packet: account it to its publisher's stream if it is inside the measurement.
fn account(ctx: &mut Ctx, c: &mut Client, payload: &[u8], rtp_time: u64) {
    ctx.packets_in += 1;
    let Some(stamp) = Stamp::read(payload) else {
        ctx.foreign += 1;
        return;
    };
    if Some(stamp.publisher) == c.plan.publisher {
        ctx.own_echo += 1;
        return;
    }
    let first = ctx
        .first
        .get(stamp.publisher as usize)
        .copied()
        .unwrap_or(u32::MAX);
    if first == u32::MAX || stamp.counter < first {
        return;
    }
    let stream = match c.streams.iter().position(|(p, _)| *p == stamp.publisher) {
        Some(k) => &mut c.streams[k].1,
        None => {
            c.streams.push((stamp.publisher, StreamStats::default()));
            &mut c.streams.last_mut().expect("just pushed").1
        }
    };
    let jitter_us = stream.packet(stamp.counter, rtp_time, ctx.arrived_ns);
    measure::record(&mut ctx.jitter, jitter_us.round() as u64);
    let latency_ns = ctx.arrived_ns.saturating_sub(stamp.sent_ns);
    measure::record(&mut ctx.latency, latency_ns / 1000);
    let read_ns = ctx.read_ns.saturating_sub(stamp.sent_ns);
    measure::record(&mut ctx.read_latency, read_ns / 1000);
}
