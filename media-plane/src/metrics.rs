//! `/metrics` in the Prometheus text format, base units (`_total`, `_bytes`), one series per core.

use crate::runtime::{CoreLoad, LATENCY_BUCKETS};
use crate::shard::ShardStats;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A core's loss and feedback counters, copied from its shard's [`ShardStats`] after every input.
#[derive(Debug, Default)]
pub struct FeedbackCounters {
    pub nacks_received: AtomicU64,
    pub rtp_retransmitted: AtomicU64,
    pub rtp_lost: AtomicU64,
    pub keyframe_requests_received: AtomicU64,
    pub keyframe_requests_forwarded: AtomicU64,
    pub keyframe_requests_dropped: AtomicU64,
    pub control_rate_limited: AtomicU64,
    pub music_packets_out: AtomicU64,
    pub music_frames_skipped: AtomicU64,
    pub rtp_forwarded_fast: AtomicU64,
}

impl FeedbackCounters {
    /// Publishes the shard's counters.
    pub(crate) fn store(&self, s: &ShardStats) {
        let set = |a: &AtomicU64, v| a.store(v, Ordering::Relaxed);
        set(&self.nacks_received, s.nacks_received);
        set(&self.rtp_retransmitted, s.rtp_retransmitted);
        set(&self.rtp_lost, s.rtp_lost);
        set(
            &self.keyframe_requests_received,
            s.keyframe_requests_received,
        );
        set(
            &self.keyframe_requests_forwarded,
            s.keyframe_requests_forwarded,
        );
        set(&self.keyframe_requests_dropped, s.keyframe_requests_dropped);
        set(&self.control_rate_limited, s.control_rate_limited);
        set(&self.music_packets_out, s.music_packets_out);
        set(&self.music_frames_skipped, s.music_frames_skipped);
        set(&self.rtp_forwarded_fast, s.rtp_forwarded_fast);
    }
}

/// Renders the node's metrics.
pub(crate) fn render(cores: &[&CoreLoad], draining: bool) -> String {
    type Read = fn(&CoreLoad) -> u64;
    let series: [(&str, &str, &str, Read); 22] = [
        ("convoy_media_rooms", "gauge", "Rooms hosted.", |c| {
            u64::from(c.rooms.load(Ordering::Relaxed))
        }),
        (
            "convoy_media_core_realtime",
            "gauge",
            "Whether the core runs at real-time (SCHED_FIFO) priority.",
            |c| u64::from(c.realtime.load(Ordering::Relaxed)),
        ),
        (
            "convoy_media_participants",
            "gauge",
            "Participants connected or joining.",
            |c| u64::from(c.participants.load(Ordering::Relaxed)),
        ),
        (
            "convoy_media_datagrams_received_total",
            "counter",
            "UDP datagrams received.",
            |c| c.datagrams_in.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_datagrams_sent_total",
            "counter",
            "UDP datagrams sent.",
            |c| c.datagrams_out.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_received_bytes_total",
            "counter",
            "UDP payload bytes received.",
            |c| c.bytes_in.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_sent_bytes_total",
            "counter",
            "UDP payload bytes sent.",
            |c| c.bytes_out.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_send_errors_total",
            "counter",
            "Datagrams the socket refused to send.",
            |c| c.send_errors.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_rtp_packets_received_total",
            "counter",
            "RTP packets received from publishers.",
            |c| c.rtp_in.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_rtp_packets_forwarded_total",
            "counter",
            "RTP packets written to subscribers.",
            |c| c.rtp_forwarded.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_datagrams_unclaimed_total",
            "counter",
            "Datagrams no participant claimed.",
            |c| c.unclaimed.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_datagrams_malformed_total",
            "counter",
            "Datagrams that failed to parse or were refused.",
            |c| c.malformed.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_nacks_received_total",
            "counter",
            "NACK feedback packets received from subscribers.",
            |c| c.feedback.nacks_received.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_rtp_retransmitted_total",
            "counter",
            "RTP packets retransmitted to subscribers (RTX) in answer to NACKs.",
            |c| c.feedback.rtp_retransmitted.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_rtp_lost_total",
            "counter",
            "RTP packets publishers sent that never reached the node.",
            |c| c.feedback.rtp_lost.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_keyframe_requests_received_total",
            "counter",
            "Keyframe requests (PLI, FIR) received from subscribers.",
            |c| {
                c.feedback
                    .keyframe_requests_received
                    .load(Ordering::Relaxed)
            },
        ),
        (
            "convoy_media_keyframe_requests_forwarded_total",
            "counter",
            "Keyframe requests relayed to a publisher (at most one per publisher per interval).",
            |c| {
                c.feedback
                    .keyframe_requests_forwarded
                    .load(Ordering::Relaxed)
            },
        ),
        (
            "convoy_media_keyframe_requests_dropped_total",
            "counter",
            "Keyframe requests not relayed (throttled, no publisher, or not negotiated).",
            |c| c.feedback.keyframe_requests_dropped.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_control_rate_limited_total",
            "counter",
            "Room-control messages dropped because their sender was over its budget.",
            |c| c.feedback.control_rate_limited.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_music_packets_total",
            "counter",
            "Music packets sent to listeners.",
            |c| c.feedback.music_packets_out.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_music_frames_skipped_total",
            "counter",
            "Music frames skipped because the core got to them more than 100 ms late.",
            |c| c.feedback.music_frames_skipped.load(Ordering::Relaxed),
        ),
        (
            "convoy_media_rtp_forwarded_fast_total",
            "counter",
            "Forwarded RTP packets sealed by the fast path (the rest of the forwarded went through str0m).",
            |c| c.feedback.rtp_forwarded_fast.load(Ordering::Relaxed),
        ),
    ];
    let mut out = String::with_capacity(4096);
    for (name, kind, help, read) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (i, c) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", read(c));
        }
    }
    let name = "convoy_media_forward_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From a publisher's datagram read to its forwarded copies handed to the kernel."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (i, c) in cores.iter().enumerate() {
        let h = &c.forward_latency;
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{core=\"{i}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{core=\"{i}\",le=\"+Inf\"}} {count}");
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{core=\"{i}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{core=\"{i}\"}} {count}");
    }
    let name = "convoy_media_core_busy_seconds_total";
    let _ = writeln!(
        out,
        "# HELP {name} Time each core spent on packets, timers and commands; its rate is the busy ratio."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for (i, c) in cores.iter().enumerate() {
        let busy = c.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}{{core=\"{i}\"}} {busy}");
    }
    let _ = writeln!(
        out,
        "# HELP convoy_media_draining Whether the node is draining (1) or serving (0)."
    );
    let _ = writeln!(out, "# TYPE convoy_media_draining gauge");
    let _ = writeln!(out, "convoy_media_draining {}", u8::from(draining));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_has_help_type_and_one_sample_per_core() {
        let (a, b) = (CoreLoad::default(), CoreLoad::default());
        b.rooms.store(3, Ordering::Relaxed);
        b.bytes_out.store(1234, Ordering::Relaxed);
        b.realtime.store(true, Ordering::Relaxed);
        b.feedback.store(&ShardStats {
            nacks_received: 7,
            rtp_retransmitted: 6,
            rtp_lost: 5,
            keyframe_requests_received: 4,
            keyframe_requests_forwarded: 3,
            keyframe_requests_dropped: 2,
            control_rate_limited: 9,
            music_packets_out: 11,
            music_frames_skipped: 12,
            rtp_forwarded_fast: 13,
            ..ShardStats::default()
        });
        let text = render(&[&a, &b], true);
        assert!(text.contains("convoy_media_rooms{core=\"1\"} 3\n"));
        assert!(text.contains("convoy_media_sent_bytes_total{core=\"1\"} 1234\n"));
        assert!(text.contains("convoy_media_draining 1\n"));
        assert!(text.contains("convoy_media_core_realtime{core=\"0\"} 0\n"));
        assert!(text.contains("convoy_media_core_realtime{core=\"1\"} 1\n"));
        for (name, value) in [
            ("nacks_received", 7),
            ("rtp_retransmitted", 6),
            ("rtp_lost", 5),
            ("keyframe_requests_received", 4),
            ("keyframe_requests_forwarded", 3),
            ("keyframe_requests_dropped", 2),
            ("control_rate_limited", 9),
            ("music_packets", 11),
            ("music_frames_skipped", 12),
            ("rtp_forwarded_fast", 13),
        ] {
            let name = format!("convoy_media_{name}_total");
            assert!(text.contains(&format!("# TYPE {name} counter\n")), "{name}");
            assert!(
                text.contains(&format!("{name}{{core=\"0\"}} 0\n")),
                "{name}"
            );
            assert!(
                text.contains(&format!("{name}{{core=\"1\"}} {value}\n")),
                "{name}"
            );
        }
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        // 22 series and busy time per core, the histogram's buckets + sum + count per core, draining.
        assert_eq!(samples, 23 * 2 + (LATENCY_BUCKETS.len() + 3) * 2 + 1);
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                name.ends_with("_total") == line.ends_with("counter"),
                "counters and only counters end in _total: {line}"
            );
        }
    }

    #[test]
    fn the_latency_histogram_is_cumulative_and_counts_everything() {
        let c = CoreLoad::default();
        for us in [10, 40, 40, 800, 100_000] {
            c.forward_latency
                .observe(std::time::Duration::from_micros(us));
        }
        let text = render(&[&c], false);
        let n = "convoy_media_forward_latency_seconds";
        assert!(
            text.contains(&format!("{n}_bucket{{core=\"0\",le=\"0.000025\"}} 1\n")),
            "{text}"
        );
        assert!(text.contains(&format!("{n}_bucket{{core=\"0\",le=\"0.00005\"}} 3\n")));
        assert!(text.contains(&format!("{n}_bucket{{core=\"0\",le=\"0.001\"}} 4\n")));
        assert!(text.contains(&format!("{n}_bucket{{core=\"0\",le=\"0.025\"}} 4\n")));
        assert!(text.contains(&format!("{n}_bucket{{core=\"0\",le=\"+Inf\"}} 5\n")));
        assert!(text.contains(&format!("{n}_count{{core=\"0\"}} 5\n")));
        assert!(
            text.contains(&format!("{n}_sum{{core=\"0\"}} 0.10089\n")),
            "{text}"
        );
    }
}
