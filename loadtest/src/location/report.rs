//! The end of a location run: the JSON report, its thresholds and the table.

use super::redis_geo::RedisSide;
use crate::report::Percentiles;
use serde::Serialize;
use std::fmt::Write as _;

/// Below this share of the offered rate, the engine (or the generator) did not keep up.
pub const MIN_PROCESSED_SHARE: f64 = 0.95;

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct LocationReport {
    pub scenario: Scenario,
    pub connections: Connections,
    pub fixes: Fixes,
    pub frames: Frames,
    /// The users uploading over HTTP (`--http-users`), if any.
    pub uploads: Option<Uploads>,
    pub alerts: Alerts,
    /// Alert arrival − send of the latest fix of either member of the pair, per delivery, µs.
    pub alert_latency_us: Percentiles,
    /// How late the writers sent after each fix was due, µs.
    pub generator_send_lag_us: Percentiles,
    /// This generator's thread: CPU time over wall time while measured.
    pub generator_busy_ratio: f64,
    pub engine: EngineSide,
    pub redis: Option<RedisSide>,
    /// Engine fixes/s processed over Redis fixes/s.
    pub engine_to_redis_ratio: Option<f64>,
    /// Why the Redis phase could not run, if it could not.
    pub redis_error: Option<String>,
    pub violations: Vec<String>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// `in-process`, or the engine's URL.
    pub target: String,
    /// Users with a stream each.
    pub users: usize,
    /// Users uploading batches over HTTP, and how.
    pub http_users: usize,
    pub http_connections: usize,
    pub http_batch: usize,
    /// Every user's groups.
    pub groups: usize,
    pub group_min: usize,
    pub group_max: usize,
    pub converging_pairs: usize,
    /// The mean size of a fix's group: the members it is read against, the streams that see it.
    pub streams_per_fix: f64,
    /// Fixes a second asked for, over every user.
    pub rate: f64,
    pub per_user_rate: f64,
    /// Fixes in one binary frame.
    pub fixes_per_frame: usize,
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
    pub seed: u64,
    pub cpu: Option<usize>,
    pub engine_cpu: Option<usize>,
    pub max_alert_p99_ms: f64,
    pub min_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub planned: usize,
    pub connected: usize,
    pub failed: usize,
    pub failures: Vec<String>,
    pub setup_seconds: f64,
    /// Streams the engine closed (or that broke) before the run closed them.
    pub unexpected_closes: u64,
    pub close_reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fixes {
    pub sent: u64,
    pub sent_measured: u64,
    /// What the connected users were scheduled to send, per second.
    pub offered_per_second: f64,
    pub sent_per_second: f64,
    /// Fixes sent in the window over the time from the window's start until the engine had
    /// answered every stream's final ping (so had taken every fix before it).
    pub processed_per_second: f64,
    /// From the end of sending until the last final ping was answered, ms.
    pub drain_ms: Option<f64>,
    /// Streams whose final ping was not answered in time.
    pub unanswered_streams: usize,
    /// Fixes the writers dropped, being more than a period late.
    pub skipped: u64,
    pub send_errors: u64,
    pub rejected: u64,
    pub rejected_reasons: Vec<String>,
}

/// The uploads (`POST /v1/fixes`): their fixes are counted in [`Fixes`] too.
#[derive(Debug, Clone, Serialize)]
pub struct Uploads {
    pub users: usize,
    pub connections: usize,
    pub batch: usize,
    /// Fixes in batches sent inside the window, and the requests.
    pub sent_measured: u64,
    pub requests_measured: u64,
    /// Uploads not answered 200 with every fix taken.
    pub failed_requests: u64,
    pub failures: Vec<String>,
    /// Why the uploads stopped short, if they did.
    pub error: Option<String>,
    /// Send → answer per upload in the window, µs.
    pub latency_us: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Frames {
    pub positions: u64,
    pub positions_per_second: f64,
    pub positions_megabytes_per_second: f64,
    /// Frames that did not parse as a server frame.
    pub unknown: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alerts {
    /// Distinct alert ids.
    pub unique: u64,
    pub near: u64,
    pub apart: u64,
    pub other: u64,
    /// Alert frames received, over every member's stream.
    pub deliveries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineSide {
    /// The engine's CPU time over wall time while measured (in-process, or --engine-pid).
    pub busy_ratio: Option<f64>,
    /// Fixes processed per second of engine CPU time: what a core would take at 100 %.
    pub fixes_per_busy_core_second: Option<f64>,
}

impl LocationReport {
    /// Fills `violations` and `passed`.
    pub fn judge(&mut self) {
        let mut v = Vec::new();
        let c = &self.connections;
        if c.failed > 0 {
            v.push(format!(
                "{} of {} streams did not open",
                c.failed, c.planned
            ));
        }
        if c.unexpected_closes > 0 {
            v.push(format!(
                "{} stream(s) closed during the run ({})",
                c.unexpected_closes,
                c.close_reasons.join("; ")
            ));
        }
        let f = &self.fixes;
        if f.sent_measured == 0 {
            v.push("no fix was sent in the window".into());
        }
        if f.rejected > 0 {
            v.push(format!(
                "{} fix(es) rejected ({})",
                f.rejected,
                f.rejected_reasons.join("; ")
            ));
        }
        if f.send_errors > 0 {
            v.push(format!("{} send error(s)", f.send_errors));
        }
        if f.unanswered_streams > 0 {
            v.push(format!(
                "{} stream(s) did not answer the final ping: the engine did not catch up",
                f.unanswered_streams
            ));
        }
        if f.processed_per_second < MIN_PROCESSED_SHARE * f.offered_per_second {
            v.push(format!(
                "{:.0} fixes/s processed, below {:.0} % of the {:.0} offered",
                f.processed_per_second,
                MIN_PROCESSED_SHARE * 100.0,
                f.offered_per_second
            ));
        }
        if let Some(u) = &self.uploads {
            if u.failed_requests > 0 {
                v.push(format!(
                    "{} upload(s) failed ({})",
                    u.failed_requests,
                    u.failures.join("; ")
                ));
            }
            if let Some(e) = &u.error {
                v.push(format!("the uploads stopped: {e}"));
            }
        }
        if self.frames.unknown > 0 {
            v.push(format!("{} frame(s) did not parse", self.frames.unknown));
        }
        let p99_ms = self.alert_latency_us.p99 as f64 / 1000.0;
        if self.alert_latency_us.count > 0 && p99_ms > self.scenario.max_alert_p99_ms {
            v.push(format!(
                "alert p99 {p99_ms:.2} ms above {} ms",
                self.scenario.max_alert_p99_ms
            ));
        }
        if let (Some(ratio), Some(min)) = (self.engine_to_redis_ratio, self.scenario.min_ratio)
            && ratio < min
        {
            v.push(format!("engine/Redis {ratio:.2}, below {min}"));
        }
        if let Some(e) = &self.redis_error {
            v.push(format!("the Redis phase failed: {e}"));
        }
        self.passed = v.is_empty();
        self.violations = v;
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let sc = &self.scenario;
        let _ = writeln!(
            s,
            "loadtest location: {} users in {} groups ({}–{}, a fix's group {:.1}), {:.0} fixes/s offered ({:.2}/s each, {} a frame), {:.1} s measured after {:.1} s, engine {}",
            sc.users + sc.http_users,
            sc.groups,
            sc.group_min,
            sc.group_max,
            sc.streams_per_fix,
            self.fixes.offered_per_second,
            sc.per_user_rate,
            sc.fixes_per_frame,
            sc.duration_seconds,
            sc.warmup_seconds,
            sc.target
        );
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<40} {v}");
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let c = &self.connections;
        row(
            &mut s,
            "streams opened (failed), setup",
            format!("{} ({}), {:.1} s", c.connected, c.failed, c.setup_seconds),
        );
        let f = &self.fixes;
        row(
            &mut s,
            "fixes sent in the window",
            format!(
                "{} ({:.0}/s; {} skipped, {} send errors)",
                f.sent_measured, f.sent_per_second, f.skipped, f.send_errors
            ),
        );
        row(
            &mut s,
            "engine processed",
            format!(
                "{:.0} fixes/s ({})",
                f.processed_per_second,
                f.drain_ms
                    .map_or("final pings unanswered".into(), |d| format!(
                        "every fix taken {d:.1} ms after the last was sent"
                    ))
            ),
        );
        row(
            &mut s,
            "rejected fixes / unexpected closes",
            format!("{} / {}", f.rejected, c.unexpected_closes),
        );
        if let Some(u) = &self.uploads {
            let l = &u.latency_us;
            row(
                &mut s,
                &format!(
                    "uploads ({} users, {} conns × {})",
                    u.users, u.connections, u.batch
                ),
                format!(
                    "{} fixes in {} requests; answered p50/p99/max {:.2} / {:.2} / {:.2} ms; {} failed",
                    u.sent_measured,
                    u.requests_measured,
                    ms(l.p50),
                    ms(l.p99),
                    ms(l.max),
                    u.failed_requests
                ),
            );
        }
        let fr = &self.frames;
        row(
            &mut s,
            "positions frames received",
            format!(
                "{:.0}/s ({:.1} MB/s)",
                fr.positions_per_second, fr.positions_megabytes_per_second
            ),
        );
        let a = &self.alerts;
        row(
            &mut s,
            "alerts (near / apart), deliveries",
            format!("{} ({} / {}), {}", a.unique, a.near, a.apart, a.deliveries),
        );
        let l = &self.alert_latency_us;
        row(
            &mut s,
            "alert latency p50/p90/p99/p99.9/max",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms ({} measured)",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                l.count
            ),
        );
        row(
            &mut s,
            "generator busy, send lag p99",
            format!(
                "{:.0} %, {:.2} ms",
                self.generator_busy_ratio * 100.0,
                ms(self.generator_send_lag_us.p99)
            ),
        );
        if let (Some(busy), Some(per_core)) = (
            self.engine.busy_ratio,
            self.engine.fixes_per_busy_core_second,
        ) {
            row(
                &mut s,
                "engine core busy, fixes/s per busy core",
                format!("{:.0} %, {per_core:.0}", busy * 100.0),
            );
        }
        if let Some(r) = &self.redis {
            row(
                &mut s,
                &format!(
                    "Redis GEOADD+GEOSEARCH ({} conns × {})",
                    r.connections, r.fixes_per_pipeline
                ),
                format!(
                    "{:.0} fixes/s over {:.1} s (Redis busy {}, generator {:.0} %, {:.1} found a search)",
                    r.fixes_per_second,
                    r.seconds,
                    r.redis_busy_ratio
                        .map_or("?".into(), |b| format!("{:.0} %", b * 100.0)),
                    r.generator_busy_ratio * 100.0,
                    r.found_per_search
                ),
            );
        }
        if let Some(ratio) = self.engine_to_redis_ratio {
            row(
                &mut s,
                "engine / Redis",
                format!(
                    "{ratio:.2}{}",
                    self.scenario
                        .min_ratio
                        .map_or(String::new(), |m| format!(" (at least {m} asked)"))
                ),
            );
        }
        if self.passed {
            let _ = writeln!(s, "PASS");
        } else {
            let _ = writeln!(s, "FAIL: {}", self.violations.join("; "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{micros_histogram, record};

    fn report() -> LocationReport {
        let mut h = micros_histogram();
        for us in [800, 900, 1_200] {
            record(&mut h, us);
        }
        LocationReport {
            scenario: Scenario {
                target: "in-process".into(),
                users: 100,
                http_users: 0,
                http_connections: 32,
                http_batch: 100,
                groups: 9,
                group_min: 4,
                group_max: 20,
                converging_pairs: 0,
                streams_per_fix: 12.0,
                rate: 1000.0,
                per_user_rate: 10.0,
                fixes_per_frame: 1,
                warmup_seconds: 1.0,
                duration_seconds: 2.0,
                seed: 1,
                cpu: None,
                engine_cpu: None,
                max_alert_p99_ms: 50.0,
                min_ratio: Some(5.0),
            },
            connections: Connections {
                planned: 100,
                connected: 100,
                failed: 0,
                failures: vec![],
                setup_seconds: 0.1,
                unexpected_closes: 0,
                close_reasons: vec![],
            },
            fixes: Fixes {
                sent: 3000,
                sent_measured: 2000,
                offered_per_second: 1000.0,
                sent_per_second: 1000.0,
                processed_per_second: 998.0,
                drain_ms: Some(1.0),
                unanswered_streams: 0,
                skipped: 0,
                send_errors: 0,
                rejected: 0,
                rejected_reasons: vec![],
            },
            uploads: None,
            frames: Frames {
                positions: 10,
                positions_per_second: 5.0,
                positions_megabytes_per_second: 0.1,
                unknown: 0,
            },
            alerts: Alerts {
                unique: 1,
                near: 1,
                apart: 0,
                other: 0,
                deliveries: 2,
            },
            alert_latency_us: Percentiles::of(&h),
            generator_send_lag_us: Percentiles::of(&micros_histogram()),
            generator_busy_ratio: 0.1,
            engine: EngineSide {
                busy_ratio: Some(0.2),
                fixes_per_busy_core_second: Some(4990.0),
            },
            redis: None,
            engine_to_redis_ratio: Some(6.0),
            redis_error: None,
            violations: vec![],
            passed: false,
        }
    }

    fn uploads(failed_requests: u64, error: Option<&str>) -> Uploads {
        Uploads {
            users: 50,
            connections: 4,
            batch: 10,
            sent_measured: 1000,
            requests_measured: 100,
            failed_requests,
            failures: vec!["upload answered 429".into(); failed_requests.min(1) as usize],
            error: error.map(str::to_string),
            latency_us: Percentiles::of(&micros_histogram()),
        }
    }

    #[test]
    fn a_clean_run_passes_and_prints_its_figures() {
        let mut r = report();
        r.judge();
        assert!(r.passed, "{:?}", r.violations);
        let t = r.table();
        assert!(t.contains("998 fixes/s"), "{t}");
        assert!(t.ends_with("PASS\n"), "{t}");
        r.uploads = Some(uploads(0, None));
        r.judge();
        assert!(r.passed, "{:?}", r.violations);
        assert!(
            r.table().contains("1000 fixes in 100 requests"),
            "{}",
            r.table()
        );
    }

    #[test]
    fn each_threshold_fails_the_run() {
        let cases: [fn(&mut LocationReport); 10] = [
            |r| r.fixes.rejected = 1,
            |r| r.connections.unexpected_closes = 1,
            |r| r.connections.failed = 1,
            |r| r.fixes.unanswered_streams = 3,
            |r| r.fixes.processed_per_second = 900.0,
            |r| r.scenario.max_alert_p99_ms = 1.0,
            |r| r.engine_to_redis_ratio = Some(4.9),
            |r| r.redis_error = Some("connection refused".into()),
            |r| r.uploads = Some(uploads(1, None)),
            |r| r.uploads = Some(uploads(0, Some("uploads unanswered at the end"))),
        ];
        for (k, spoil) in cases.iter().enumerate() {
            let mut r = report();
            spoil(&mut r);
            r.judge();
            assert!(!r.passed, "case {k}");
            assert_eq!(r.violations.len(), 1, "case {k}: {:?}", r.violations);
            assert!(r.table().contains("FAIL: "));
        }
    }
}
