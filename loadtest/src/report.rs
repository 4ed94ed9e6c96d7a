//! The end of a run: thresholds, the JSON report and the table.

use crate::measure::loss_ratio;
use crate::sfu::Outcome;
use crate::sfu::SfuArgs;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// What turns a run into a failure.
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub max_loss_ratio: f64,
    pub max_p99: Duration,
}

/// Percentiles of a µs histogram.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// The node's side of the measurement, from its `/metrics` before and after.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeSide {
    pub cores: usize,
    /// Cores running at real-time priority.
    pub realtime_cores: usize,
    /// Busy ratio per core over the measurement.
    pub busy_ratio: Vec<f64>,
    pub rtp_forwarded_per_second: f64,
    /// Of those, sealed by the node's fast path.
    pub rtp_forwarded_fast_per_second: f64,
    pub datagrams_sent_per_second: f64,
    pub send_errors: f64,
    /// Upper bound of the histogram bucket holding the 99th percentile of the node's own forward
    /// latency (read → copies handed to the kernel), µs.
    pub forward_latency_p99_le_us: Option<f64>,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub clients: Clients,
    pub streams: Streams,
    /// Forward latency: the speaker's send to the datagram reaching the listener's socket (the
    /// kernel's receive stamp; on loopback, the node's send), both on this machine's clock, µs.
    pub latency_us: Percentiles,
    /// The speaker's send to the generator's read of the datagram, µs: the forward latency plus
    /// the generator's own read backlog.
    pub read_latency_us: Percentiles,
    /// RFC 3550 interarrival jitter estimates, µs.
    pub jitter_us: Percentiles,
    /// How late the generator's own sends left, µs: high values mean the generator, not the
    /// node, was the bottleneck.
    pub generator_send_lag_us: Percentiles,
    pub generator_busy_ratio: f64,
    pub node: Option<NodeSide>,
    pub violations: Vec<String>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub rooms: usize,
    pub speakers: usize,
    pub listeners: usize,
    pub payload_bytes: usize,
    pub measured_seconds: f64,
    pub max_loss_percent: f64,
    pub max_p99_ms: f64,
    /// The generator's `SCHED_FIFO` priority, if it ran at one.
    pub generator_realtime_priority: Option<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Clients {
    pub planned: usize,
    pub joined: usize,
    pub connected: usize,
    pub failed: usize,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Streams {
    /// Subscriber streams: (listener, publisher) pairs between connected clients.
    pub subscriber_streams: u64,
    pub streams_heard: u64,
    pub packets_expected: u64,
    pub packets_received: u64,
    pub loss_percent: f64,
    pub worst_stream_loss_percent: f64,
    pub reordered: u64,
    pub received_packets_per_second: f64,
    pub own_voice_received: u64,
    pub foreign_payloads: u64,
    /// Packets whose SRTP authentication failed at the listener.
    pub unauthentic_packets: u64,
    pub generator_send_errors: u64,
}

impl Report {
    pub fn new(args: &SfuArgs, o: &Outcome, t: &Thresholds) -> Self {
        let loss = loss_ratio(o.packets_expected, o.packets_received);
        let latency = Percentiles::of(&o.latency);
        let node = match (&o.node_before, &o.node_after) {
            (Some(a), Some(b)) => Some(node_side(a, b, o.measured)),
            _ => None,
        };
        let mut violations = Vec::new();
        if o.failed > 0 {
            violations.push(format!("{} client(s) failed", o.failed));
        }
        if o.streams == 0 || o.packets_expected == 0 {
            violations.push("nothing was measured".into());
        }
        if loss > t.max_loss_ratio {
            violations.push(format!(
                "loss {:.4} % above {:.4} %",
                loss * 100.0,
                t.max_loss_ratio * 100.0
            ));
        }
        if Duration::from_micros(latency.p99) > t.max_p99 {
            violations.push(format!(
                "p99 forward latency {} µs above {} µs",
                latency.p99,
                t.max_p99.as_micros()
            ));
        }
        if o.own_echo > 0 {
            violations.push(format!(
                "{} packet(s) of a speaker's own voice came back",
                o.own_echo
            ));
        }
        if o.foreign > 0 {
            violations.push(format!("{} payload(s) arrived mangled", o.foreign));
        }
        if o.unauthentic > 0 {
            violations.push(format!(
                "{} packet(s) failed SRTP authentication",
                o.unauthentic
            ));
        }
        Self {
            scenario: Scenario {
                rooms: args.rooms,
                speakers: args.speakers,
                listeners: args.listeners,
                payload_bytes: args.payload,
                measured_seconds: o.measured.as_secs_f64(),
                max_loss_percent: t.max_loss_ratio * 100.0,
                max_p99_ms: t.max_p99.as_secs_f64() * 1000.0,
                generator_realtime_priority: args.realtime_priority,
            },
            clients: Clients {
                planned: o.planned,
                joined: o.joined,
                connected: o.connected,
                failed: o.failed,
                failures: o.failures.clone(),
            },
            streams: Streams {
                subscriber_streams: o.streams,
                streams_heard: o.streams_heard,
                packets_expected: o.packets_expected,
                packets_received: o.packets_received,
                loss_percent: loss * 100.0,
                worst_stream_loss_percent: o.worst_stream_loss * 100.0,
                reordered: o.reordered,
                received_packets_per_second: o.packets_received as f64
                    / o.measured.as_secs_f64().max(1e-9),
                own_voice_received: o.own_echo,
                foreign_payloads: o.foreign,
                unauthentic_packets: o.unauthentic,
                generator_send_errors: o.send_errors,
            },
            latency_us: latency,
            read_latency_us: Percentiles::of(&o.read_latency),
            jitter_us: Percentiles::of(&o.jitter),
            generator_send_lag_us: Percentiles::of(&o.send_lag),
            generator_busy_ratio: o.generator_busy,
            node,
            passed: violations.is_empty(),
            violations,
        }
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let s_ = &self.scenario;
        let _ = writeln!(
            s,
            "loadtest sfu: {} rooms × ({} speakers, {} listeners), {} B payloads, {:.1} s measured",
            s_.rooms, s_.speakers, s_.listeners, s_.payload_bytes, s_.measured_seconds
        );
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<34} {v}");
        };
        let c = &self.clients;
        row(
            &mut s,
            "clients joined / connected / failed",
            format!("{} / {} / {}", c.joined, c.connected, c.failed),
        );
        let st = &self.streams;
        row(
            &mut s,
            "subscriber streams (heard)",
            format!("{} ({})", st.subscriber_streams, st.streams_heard),
        );
        row(
            &mut s,
            "packets received / expected",
            format!("{} / {}", st.packets_received, st.packets_expected),
        );
        row(
            &mut s,
            "received packets/s",
            format!("{:.0}", st.received_packets_per_second),
        );
        row(
            &mut s,
            "loss (worst stream)",
            format!(
                "{:.4} % ({:.4} %)",
                st.loss_percent, st.worst_stream_loss_percent
            ),
        );
        let l = &self.latency_us;
        row(
            &mut s,
            "forward latency p50/p90/p99/p99.9/max",
            format!(
                "{} / {} / {} / {} / {} µs",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        );
        let r = &self.read_latency_us;
        row(
            &mut s,
            "… to the generator's read p50/p99",
            format!("{} / {} µs", r.p50, r.p99),
        );
        let j = &self.jitter_us;
        row(
            &mut s,
            "jitter (RFC 3550) p50/p99/max",
            format!("{} / {} / {} µs", j.p50, j.p99, j.max),
        );
        let g = &self.generator_send_lag_us;
        row(
            &mut s,
            "generator busy, send lag p99",
            format!("{:.0} %, {} µs", self.generator_busy_ratio * 100.0, g.p99),
        );
        if let Some(n) = &self.node {
            let busy: Vec<String> = n
                .busy_ratio
                .iter()
                .map(|b| format!("{:.0} %", b * 100.0))
                .collect();
            row(&mut s, "node core busy", busy.join(", "));
            row(
                &mut s,
                "node cores at real-time priority",
                format!("{} of {}", n.realtime_cores, n.cores),
            );
            row(
                &mut s,
                "node RTP forwarded/s",
                format!("{:.0}", n.rtp_forwarded_per_second),
            );
            row(
                &mut s,
                "node forward latency p99",
                n.forward_latency_p99_le_us
                    .map_or("-".into(), |v| format!("≤ {v} µs")),
            );
            row(&mut s, "node send errors", format!("{}", n.send_errors));
        }
        if self.passed {
            let _ = writeln!(s, "PASS");
        } else {
            let _ = writeln!(s, "FAIL: {}", self.violations.join("; "));
        }
        s
    }
}

/// A metric's value per `core` label (samples without one are ignored).
fn per_core(text: &str, name: &str) -> Vec<(usize, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix("{core=\"")?;
            let (core, rest) = rest.split_once('"')?;
            let value = rest.strip_prefix('}')?.trim();
            Some((core.parse().ok()?, value.parse().ok()?))
        })
        .collect()
}

fn sum(text: &str, name: &str) -> f64 {
    per_core(text, name).iter().map(|(_, v)| v).sum()
}

/// Cumulative `le` buckets of a histogram, summed over cores.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some(slot) => slot.1 += v,
            None => out.push((le, v)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The node's side from two scrapes `measured` apart.
pub fn node_side(before: &str, after: &str, measured: Duration) -> NodeSide {
    let secs = measured.as_secs_f64().max(1e-9);
    let busy_name = "convoy_media_core_busy_seconds_total";
    let b0 = per_core(before, busy_name);
    let busy_ratio = per_core(after, busy_name)
        .iter()
        .map(|(core, v)| {
            let was = b0.iter().find(|(c, _)| c == core).map_or(0.0, |(_, v)| *v);
            (v - was) / secs
        })
        .collect::<Vec<_>>();
    let delta = |name: &str| sum(after, name) - sum(before, name);
    let lat = "convoy_media_forward_latency_seconds";
    let (h0, h1) = (buckets(before, lat), buckets(after, lat));
    let diff: Vec<(f64, f64)> = h1
        .iter()
        .map(|(le, v)| {
            let was = h0.iter().find(|(b, _)| b == le).map_or(0.0, |(_, w)| *w);
            (*le, v - was)
        })
        .collect();
    let total = diff.last().map_or(0.0, |(_, v)| *v);
    let p99 = (total > 0.0)
        .then(|| {
            diff.iter()
                .find(|(_, v)| *v >= 0.99 * total)
                .map(|(le, _)| le * 1e6)
        })
        .flatten();
    NodeSide {
        cores: busy_ratio.len(),
        realtime_cores: per_core(after, "convoy_media_core_realtime")
            .iter()
            .filter(|(_, v)| *v == 1.0)
            .count(),
        busy_ratio,
        rtp_forwarded_per_second: delta("convoy_media_rtp_packets_forwarded_total") / secs,
        rtp_forwarded_fast_per_second: delta("convoy_media_rtp_forwarded_fast_total") / secs,
        datagrams_sent_per_second: delta("convoy_media_datagrams_sent_total") / secs,
        send_errors: delta("convoy_media_send_errors_total"),
        forward_latency_p99_le_us: p99,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE convoy_media_core_busy_seconds_total counter
convoy_media_core_busy_seconds_total{core=\"0\"} 1.5
convoy_media_rtp_packets_forwarded_total{core=\"0\"} 1000
convoy_media_forward_latency_seconds_bucket{core=\"0\",le=\"0.0001\"} 10
convoy_media_forward_latency_seconds_bucket{core=\"0\",le=\"0.001\"} 10
convoy_media_forward_latency_seconds_bucket{core=\"0\",le=\"+Inf\"} 10
";
    const AFTER: &str = "\
convoy_media_core_busy_seconds_total{core=\"0\"} 3.5
convoy_media_core_realtime{core=\"0\"} 1
convoy_media_rtp_packets_forwarded_total{core=\"0\"} 21000
convoy_media_forward_latency_seconds_bucket{core=\"0\",le=\"0.0001\"} 950
convoy_media_forward_latency_seconds_bucket{core=\"0\",le=\"0.001\"} 1005
convoy_media_forward_latency_seconds_bucket{core=\"0\",le=\"+Inf\"} 1010
";

    #[test]
    fn node_side_is_the_difference_of_two_scrapes() {
        let n = node_side(BEFORE, AFTER, Duration::from_secs(4));
        assert_eq!(n.cores, 1);
        assert_eq!(n.realtime_cores, 1);
        assert!((n.busy_ratio[0] - 0.5).abs() < 1e-9);
        assert!((n.rtp_forwarded_per_second - 5000.0).abs() < 1e-9);
        // 1000 new observations: 940 ≤ 100 µs, 995 ≤ 1 ms: the 99th is in the 1 ms bucket.
        assert_eq!(n.forward_latency_p99_le_us, Some(1000.0));
    }
}
