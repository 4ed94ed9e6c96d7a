//! `loadtest sfu` against the whole stack in this process, at a size any machine carries: the
//! scenario's plumbing (REST, WHIP, ICE/DTLS/SRTP with str0m, stamps, report, thresholds) works.
//! Its figures belong to the README's performance section, measured with `loadtest/run-sfu.sh`.

use convoy::dev::{DevConfig, DevStack};
use loadtest::sfu::{SfuArgs, run};
use std::path::PathBuf;

fn args(control_plane: &str, json: PathBuf) -> SfuArgs {
    SfuArgs {
        control_plane: control_plane.to_string(),
        rooms: 2,
        speakers: 2,
        listeners: 3,
        duration: 2.0,
        warmup: 1.0,
        connect_timeout: 20.0,
        payload: 120,
        join_concurrency: 4,
        cpu: None,
        // Generous: this checks the pipeline, not speed (a busy CI machine shares its cores).
        max_loss_percent: 5.0,
        max_p99_ms: 1000.0,
        json,
        quiet: true,
        str0m_receive: false,
        spin: false,
        realtime_priority: None,
    }
}

#[test]
fn a_small_run_hears_every_stream_and_writes_its_report() {
    let dir = std::env::temp_dir().join(format!("convoy-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = DevConfig::ephemeral(dir.join("data"));
    config.cores = 1;
    let stack = rt.block_on(DevStack::start(config)).unwrap();
    let json = dir.join("report.json");

    let passed = run(args(&stack.control_plane_url, json.clone())).unwrap();

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(passed, "{report:#}");
    // 2 rooms × (2 speakers hearing 1 other + 3 listeners hearing 2) = 16 streams.
    assert_eq!(report["clients"]["connected"], 10, "{report:#}");
    assert_eq!(report["streams"]["subscriber_streams"], 16, "{report:#}");
    assert_eq!(report["streams"]["streams_heard"], 16, "{report:#}");
    assert_eq!(report["streams"]["own_voice_received"], 0);
    let expected = report["streams"]["packets_expected"].as_u64().unwrap();
    // 2 s at 50 packets/s per stream, give or take the edges of the window.
    assert!((16 * 95..=16 * 105).contains(&expected), "{expected}");
    assert!(report["latency_us"]["count"].as_u64().unwrap() > 0);
    // Each packet reached its socket (the kernel's stamp) before the generator read it.
    for q in ["p50", "p99", "max"] {
        let (arrived, read) = (&report["latency_us"][q], &report["read_latency_us"][q]);
        assert!(
            arrived.as_u64().unwrap() <= read.as_u64().unwrap(),
            "{q}: {report:#}"
        );
    }
    // Every packet opened and authenticated with the listener's own keys.
    assert_eq!(report["streams"]["unauthentic_packets"], 0);
    // The node's side came from its /metrics: str0m clients negotiate no NACK, so the node's
    // fast path sealed every forwarded packet.
    let forwarded = report["node"]["rtp_forwarded_per_second"].as_f64().unwrap();
    assert!(forwarded > 0.0, "{report:#}");
    assert_eq!(
        report["node"]["rtp_forwarded_fast_per_second"].as_f64(),
        Some(forwarded),
        "{report:#}"
    );

    // The same through str0m on the listeners' side: the fast path and str0m agree.
    let mut slow = args(&stack.control_plane_url, dir.join("slow.json"));
    slow.str0m_receive = true;
    slow.rooms = 1;
    // And with a generator that never sleeps.
    slow.spin = true;
    assert!(run(slow).unwrap());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("slow.json")).unwrap()).unwrap();
    assert_eq!(report["streams"]["streams_heard"], 8, "{report:#}");

    // A threshold that cannot hold turns into a failure.
    let mut strict = args(&stack.control_plane_url, dir.join("strict.json"));
    strict.max_p99_ms = 0.000_1;
    strict.rooms = 1;
    assert!(!run(strict).unwrap());

    rt.block_on(stack.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
