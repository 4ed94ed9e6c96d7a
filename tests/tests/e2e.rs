//! End to end: the whole stack in one process, two real third-party WebRTC clients (aiortc).
//!
//! Needs `CONVOY_TEST_PYTHON`: a Python with `aiortc`, `aiohttp` and `numpy` installed.

use convoy::dev::{DevConfig, DevStack};
use protocol::api::SessionKind;
use protocol::token::{JoinClaims, TokenKind};
use protocol::{GroupId, NodeId, SessionId, UserId};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tests::audio;
use tokio::io::{AsyncBufReadExt, BufReader};

const TONE_A: f64 = 440.0;
const TONE_B: f64 = 660.0;
const TONE_SECONDS: f64 = 4.0;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("convoy-{name}-{}", uuid_like()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn uuid_like() -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{n}", std::process::id())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/aiortc_call.py")
}

/// A join token minted with the control plane's key, as the control plane would.
fn join_token(stack: &DevStack, session: SessionId, aud: &str, exp: u64) -> String {
    stack.signer.sign(&JoinClaims {
        iss: "convoy".into(),
        sub: UserId::from_uuid(uuid::Uuid::now_v7()),
        aud: NodeId::new(aud).unwrap(),
        typ: TokenKind::Join,
        iat: unix_now(),
        exp,
        jti: uuid::Uuid::new_v4().to_string(),
        sid: session,
        grp: GroupId::from_uuid(uuid::Uuid::now_v7()),
        kind: SessionKind::Audio,
        publish: true,
        sub_media: true,
        music_ctl: false,
        mix: false,
        e2ee: false,
        admin: false,
    })
}

/// Bad WHIP requests sent while the call is running: each gets a problem+json 4xx.
async fn probe_bad_input(stack: &DevStack, whip_url: &str, session: SessionId, used_token: &str) {
    let http = reqwest::Client::new();
    let node = stack.node_id.as_str();
    let later = unix_now() + 60;
    let cases: Vec<(&str, Option<String>, &str, &str, u16)> = vec![
        ("no token", None, "application/sdp", "v=0\r\n", 401),
        (
            "garbage token",
            Some("not.a.jwt".into()),
            "application/sdp",
            "v=0\r\n",
            401,
        ),
        (
            "token for another node",
            Some(join_token(stack, session, "some-other-node", later)),
            "application/sdp",
            "v=0\r\n",
            401,
        ),
        (
            "expired token",
            Some(join_token(stack, session, node, unix_now() - 3600)),
            "application/sdp",
            "v=0\r\n",
            401,
        ),
        (
            "replayed token",
            Some(used_token.to_string()),
            "application/sdp",
            "v=0\r\n",
            401,
        ),
        (
            "malformed SDP",
            Some(join_token(stack, session, node, later)),
            "application/sdp",
            "this is not SDP",
            400,
        ),
        (
            "wrong content type",
            Some(join_token(stack, session, node, later)),
            "application/json",
            "{}",
            415,
        ),
        (
            "token for another session",
            Some(join_token(
                stack,
                SessionId::from_uuid(uuid::Uuid::now_v7()),
                node,
                later,
            )),
            "application/sdp",
            "v=0\r\n",
            403,
        ),
    ];
    for (what, token, content_type, body, status) in cases {
        let mut req = http
            .post(whip_url)
            .header("content-type", content_type)
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{what}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let problem: protocol::api::Problem = res.json().await.unwrap();
        assert_eq!(problem.status, status, "{what}");
        println!("bad input: {what:<26} -> {status} {}", problem.title);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aiortc_clients_hear_each_other_and_never_themselves() {
    let Some(python) = tests::external("CONVOY_TEST_PYTHON", "aiortc end-to-end call") else {
        return;
    };
    let dir = temp_dir("e2e");
    let mut config = DevConfig::ephemeral(dir.join("data"));
    config.cores = 2;
    let stack = DevStack::start(config).await.unwrap();

    let (wav_a, wav_b) = (dir.join("tone_a.wav"), dir.join("tone_b.wav"));
    audio::write_tone(&wav_a, TONE_A, TONE_SECONDS, 0.5).unwrap();
    audio::write_tone(&wav_b, TONE_B, TONE_SECONDS, 0.5).unwrap();
    let (out_a, out_b) = (dir.join("heard_by_a.wav"), dir.join("heard_by_b.wav"));

    let mut child = tokio::process::Command::new(&python)
        .arg(script())
        .args(["--base-url", &stack.control_plane_url])
        .arg("--wav-a")
        .arg(&wav_a)
        .arg("--wav-b")
        .arg(&wav_b)
        .arg("--out-a")
        .arg(&out_a)
        .arg("--out-b")
        .arg(&out_b)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the Python in CONVOY_TEST_PYTHON runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let run = async {
        let mut done = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            let msg: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("client printed non-JSON {line:?}: {e}"));
            match msg["event"].as_str() {
                Some("connected") => {
                    assert_eq!(msg["status_a"], 201, "the first member creates the session");
                    assert_eq!(msg["status_b"], 200, "the second member joins it");
                    assert_eq!(msg["session_a"], msg["session_b"], "one session, one node");
                    assert_eq!(msg["session_a"]["node_id"], stack.node_id.as_str());
                    let session: SessionId =
                        msg["session_a"]["id"].as_str().unwrap().parse().unwrap();
                    probe_bad_input(
                        &stack,
                        msg["whip_url"].as_str().unwrap(),
                        session,
                        msg["used_join_token"].as_str().unwrap(),
                    )
                    .await;
                }
                Some("done") => {
                    done = Some(msg);
                    break;
                }
                other => panic!("unexpected client event {other:?}"),
            }
        }
        done
    };
    let done = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the call finishes within two minutes")
        .expect("the client reports the end of the call");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "client exited with {status}");

    let sent = done["sent_seconds"].as_f64().unwrap();
    assert!((sent - TONE_SECONDS).abs() < 1e-6);
    for (who, path, hears, own) in [("a", &out_a, TONE_B, TONE_A), ("b", &out_b, TONE_A, TONE_B)] {
        let x = audio::read_mono(path).unwrap();
        let heard = audio::analyse(&x, hears, own);
        println!(
            "client {who}: heard {:.1} Hz for {:.3} s of {sent:.3} s sent; own tone at {:.1} dB relative",
            heard.peak_hz, heard.seconds, heard.leakage_db
        );
        assert!(
            (heard.peak_hz - hears).abs() <= 2.0,
            "client {who} hears the other's tone: {heard:?}"
        );
        assert!(
            (heard.seconds - sent).abs() / sent <= 0.10,
            "client {who} hears it for the duration sent: {heard:?}"
        );
        assert!(
            heard.leakage_db < -30.0,
            "client {who} does not hear itself: {heard:?}"
        );
    }
    // The node counted what it forwarded and how long forwarding took.
    let metrics = tests::node_metrics(&stack.media_url).await;
    let total = |name: &str| tests::metric_sum(&metrics, name);
    let forwarded = total("convoy_media_rtp_packets_forwarded_total");
    let observed = total("convoy_media_forward_latency_seconds_count");
    let within_1ms: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("convoy_media_forward_latency_seconds_bucket")
                && l.contains("le=\"0.001\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "node: {forwarded} RTP packets forwarded; {observed} forwards timed, {:.1} % within 1 ms",
        100.0 * within_1ms / observed.max(1.0)
    );
    assert!(
        forwarded >= 2.0 * 50.0 * TONE_SECONDS,
        "both directions forwarded: {forwarded}"
    );
    assert!(
        observed >= forwarded * 0.9,
        "forward latency observed per packet: {observed}"
    );
    stack.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
