//! `loadtest location` at a size any machine carries, with the engine in this process: the
//! scenario's plumbing (own tokens and JWKS, streams, binary fixes, pings, alert latency, report,
//! thresholds) works. Two converging pairs make alerts certain: each pair starts 300 m apart
//! (seeded `apart`) and closes at 30 m/s, so it reads `near` (under 200 m less the 7 m of
//! combined accuracy) about 3.6 s after its first fixes, inside the 1 s + 4 s run. As many
//! users again and half more upload batches over HTTP through four keep-alive connections.
//! With `CONVOY_TEST_REDIS_URL` the Redis GEO comparison runs too, briefly.
//! Its figures belong to the README's performance section, measured in release mode.

use loadtest::location::{LocationArgs, run};

#[test]
fn a_small_run_takes_every_fix_raises_alerts_and_writes_its_report() {
    let dir = std::env::temp_dir().join(format!("convoy-loadtest-location-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let redis = std::env::var("CONVOY_TEST_REDIS_URL").ok();
    let args = LocationArgs {
        target: None,
        jwks_port: None,
        users: 200,
        group_min: 4,
        group_max: 20,
        converging_pairs: 2,
        // 5 fixes/s a user, streams' and uploaders'.
        rate: 2500.0,
        // Two fixes a frame: the batch path (one per frame is the same loop with one).
        fixes_per_frame: 2,
        http_users: 300,
        http_connections: 4,
        // One upload a user a second.
        http_batch: 5,
        duration: 4.0,
        warmup: 1.0,
        seed: 5,
        connect_concurrency: 16,
        cpu: None,
        engine_cpu: None,
        engine_pid: None,
        against_redis: redis.clone(),
        redis_connections: 2,
        redis_pipeline: 64,
        redis_duration: Some(0.5),
        // Generous: this checks the pipeline, not speed (a test build on a shared machine).
        max_alert_p99_ms: 1000.0,
        // The ratio is for release builds on a quiet machine; here only that Redis ran.
        min_ratio: 0.0,
        report: json.clone(),
        quiet: true,
    };

    let passed = run(args).unwrap();

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(passed, "{report:#}");
    assert_eq!(report["connections"]["connected"], 200, "{report:#}");
    assert_eq!(report["connections"]["unexpected_closes"], 0, "{report:#}");
    assert_eq!(report["fixes"]["rejected"], 0, "{report:#}");
    assert_eq!(report["fixes"]["unanswered_streams"], 0, "{report:#}");
    // 4 s at 2500 fixes/s, give or take the edges of the window; a generator that falls behind
    // on a busy test machine skips fixes rather than bursting, so fewer may go, never more.
    let sent = report["fixes"]["sent_measured"].as_u64().unwrap();
    assert!((5_000..=10_500).contains(&sent), "{sent}");
    assert!(report["fixes"]["processed_per_second"].as_f64().unwrap() > 1_250.0);
    // The uploads: 300 users × 5 fixes/s × 4 s, each upload answered with all of its fixes
    // taken (a failed one fails the run).
    let uploads = &report["uploads"];
    let uploaded = uploads["sent_measured"].as_u64().unwrap();
    assert!((3_000..=6_300).contains(&uploaded), "{uploaded}");
    assert_eq!(uploads["failed_requests"], 0, "{report:#}");
    assert_eq!(
        uploads["latency_us"]["count"], uploads["requests_measured"],
        "{report:#}"
    );
    assert!(sent > uploaded, "the streams' fixes count too");
    assert!(report["frames"]["positions"].as_u64().unwrap() > 0);
    // Both converging pairs met (random wanderers may add more).
    assert!(
        report["alerts"]["near"].as_u64().unwrap() >= 2,
        "{report:#}"
    );
    assert!(report["alert_latency_us"]["count"].as_u64().unwrap() >= 4);
    assert!(report["engine"]["busy_ratio"].as_f64().unwrap() > 0.0);
    if redis.is_some() {
        assert!(
            report["redis"]["fixes_per_second"].as_f64().unwrap() > 0.0,
            "{report:#}"
        );
        assert!(report["redis"]["keys_deleted"].as_u64().unwrap() > 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
