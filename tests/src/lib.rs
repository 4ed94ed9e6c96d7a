//! Support for the end-to-end tests: gating on external parts and audio analysis.
//!
//! Tests that need something outside the workspace (aiortc, Chromium, PostgreSQL, Redis) find it
//! through an environment variable. When it is absent they print one loud `SKIPPED` line and pass,
//! unless `CONVOY_REQUIRE_EXTERNAL=1` (set by CI), which turns the skip into a failure.

pub mod api;
pub mod audio;

/// The value of `var`, or `None` after printing a SKIPPED line (panics instead under
/// `CONVOY_REQUIRE_EXTERNAL=1`).
pub fn external(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CONVOY_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1") {
                panic!("{what} is required (CONVOY_REQUIRE_EXTERNAL=1) but {var} is not set");
            }
            eprintln!("\n==== SKIPPED: {what} (set {var}) ====\n");
            None
        }
    }
}

/// A program found through `var`, else at `default` when that file exists; otherwise `None` after
/// printing a SKIPPED line (panics instead under `CONVOY_REQUIRE_EXTERNAL=1`).
pub fn external_program(var: &str, default: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::path::Path::new(default).is_file() => Some(default.to_string()),
        _ => external(var, what),
    }
}

/// Reports that `what` cannot run here because `why`: prints a SKIPPED line, or panics under
/// `CONVOY_REQUIRE_EXTERNAL=1`.
pub fn missing(what: &str, why: &str) {
    if std::env::var("CONVOY_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1") {
        panic!("{what} is required (CONVOY_REQUIRE_EXTERNAL=1) but {why}");
    }
    eprintln!("\n==== SKIPPED: {what} ({why}) ====\n");
}

/// A media node's `/metrics` text (`media_url`: the node's HTTP base).
pub async fn node_metrics(media_url: &str) -> String {
    reqwest::get(format!("{media_url}/metrics"))
        .await
        .expect("the node answers /metrics")
        .text()
        .await
        .expect("a /metrics body")
}

/// The sum over every label set of the Prometheus series `name` in a `/metrics` text.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
