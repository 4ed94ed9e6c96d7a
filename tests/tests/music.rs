//! End to end: shared music in a music session, heard by a real third-party WebRTC client
//! (aiortc) through the whole stack in one process.
//!
//! Ann (a group admin) uploads two audio files to the group — a 44.1 kHz stereo WAV and an Ogg
//! Opus file made by PyAV (FFmpeg) — queues them through the REST API and plays them. Bob listens
//! with aiortc. His recording must hold the first tone for the first track's length, then the
//! second; `/v1/events` must tell the group each change, and the session's music must read idle
//! once both tracks ended.
//!
//! Needs `CONVOY_TEST_PYTHON`: a Python with `tests/clients/requirements.txt`.

use convoy::dev::{DevConfig, DevStack};
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::api::SessionKind;
use protocol::music::MusicState;
use protocol::realtime::{EventData, ServerFrame};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tests::api::User;
use tests::audio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// The first track: a WAV at 44.1 kHz (the node resamples it), 3 s.
const TONE_1: f64 = 700.0;
const SECONDS_1: f64 = 3.0;
/// The second: Ogg Opus (decoded with libopus on the node), 2 s.
const TONE_2: f64 = 950.0;
const SECONDS_2: f64 = 2.0;
/// Bounds each wait that should end by itself, so a bug fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

fn clients() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// A stereo 16-bit WAV at 44.1 kHz: the same tone on both sides.
fn wav_44k(hz: f64, seconds: f64) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
    for i in 0..(seconds * 44_100.0) as usize {
        let v = 0.4 * (std::f64::consts::TAU * hz * i as f64 / 44_100.0).sin();
        let s = (v * f64::from(i16::MAX)) as i16;
        w.write_sample(s).unwrap();
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    out.into_inner()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `/v1/events` for `user`, past its `ready`.
async fn events(stack: &DevStack, user: &User) -> Ws {
    let url = format!(
        "{}/v1/events",
        stack.control_plane_url.replace("http", "ws")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", user.token).parse().unwrap(),
    );
    let mut ws = tokio_tungstenite::connect_async(req).await.unwrap().0;
    ws.send(Message::Text(r#"{"type":"hello"}"#.into()))
        .await
        .unwrap();
    loop {
        if let ServerFrame::Ready { .. } = next_frame(&mut ws).await {
            return ws;
        }
    }
}

async fn next_frame(ws: &mut Ws) -> ServerFrame {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => {}
            other => panic!("/v1/events ended: {other:?}"),
        }
    }
}

/// The next `music` event of the group.
async fn next_music(ws: &mut Ws) -> MusicState {
    loop {
        if let ServerFrame::Event(e) = next_frame(ws).await
            && let EventData::Music { music, .. } = e.data
        {
            return music;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_hears_the_queued_tracks_in_turn_and_the_group_is_told_each_change() {
    let Some(python) = tests::external("CONVOY_TEST_PYTHON", "aiortc music session") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "convoy-music-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let stack = DevStack::start(DevConfig::ephemeral(dir.join("data")))
        .await
        .unwrap();
    let base = &stack.control_plane_url;
    let ann = User::register(base, "ann").await.unwrap();
    let bob = User::register(base, "bob").await.unwrap();
    let group = ann.create_group("Road trip").await.unwrap();
    bob.accept(&ann.invite(&group).await.unwrap())
        .await
        .unwrap();
    let mut ws = events(&stack, &ann).await;

    // The files: a WAV written here, an Ogg Opus file encoded by PyAV's FFmpeg.
    let opus_path = dir.join("second.opus");
    let made = tokio::process::Command::new(&python)
        .arg(clients().join("make_track.py"))
        .args([
            "--hz",
            &TONE_2.to_string(),
            "--seconds",
            &SECONDS_2.to_string(),
        ])
        .arg("--out")
        .arg(&opus_path)
        .status()
        .await
        .unwrap();
    assert!(made.success(), "make_track.py: {made}");
    let first = ann
        .upload(&group, "first.wav", "audio/wav", wav_44k(TONE_1, SECONDS_1))
        .await
        .unwrap();
    let second = ann
        .upload(
            &group,
            "second.opus",
            "audio/ogg",
            std::fs::read(&opus_path).unwrap(),
        )
        .await
        .unwrap();

    // Bob opens the group's music session and listens.
    let (status, alloc) = bob.allocate_kind(&group, SessionKind::Music).await.unwrap();
    assert_eq!(status, 201);
    let session = alloc.session.id;
    let out = dir.join("heard_by_bob.wav");
    let mut child = tokio::process::Command::new(&python)
        .arg(clients().join("aiortc_listen.py"))
        .args(["--whip-url", &alloc.candidates[0].whip_url])
        .args(["--join-token", &alloc.join_token])
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the Python in CONVOY_TEST_PYTHON runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut expect = async |event: &str| {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the listener answers in time")
            .unwrap()
            .expect("the listener is running");
        let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(msg["event"], event, "{msg}");
        msg
    };
    expect("connected").await;

    // Ann queues both (the node decodes each file before it answers) and plays.
    let (status, state) = ann
        .music(
            session,
            serde_json::json!({"action": "queue", "track": first.id}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["current"]["name"], "first.wav");
    assert_eq!(state["current"]["duration_ms"], 3_000);
    let (status, state) = ann
        .music(
            session,
            serde_json::json!({"action": "queue", "track": second.id}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["queue"][0]["name"], "second.opus");
    // The Opus file keeps its length to the frame (its pre-skip is dropped).
    let d2 = state["queue"][0]["duration_ms"].as_u64().unwrap();
    assert!((1_980..=2_040).contains(&d2), "{d2} ms");
    // A file that is not audio at all is refused by the node with a reason.
    let junk = ann
        .upload(&group, "junk.mp3", "audio/mpeg", {
            let mut b = b"ID3\x04\0\0\0\0\0\0".to_vec();
            b.extend(std::iter::repeat_n(0x5a, 4000));
            b
        })
        .await
        .unwrap();
    let (status, refused) = ann
        .music(
            session,
            serde_json::json!({"action": "queue", "track": junk.id}),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{refused}");

    stdin.write_all(b"start\n").await.unwrap();
    expect("started").await;
    let (status, state) = ann
        .music(session, serde_json::json!({"action": "play"}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["playing"], true);

    // The group is told: two queued, playing, the second track, the end.
    let mut seen = Vec::new();
    loop {
        let m = next_music(&mut ws).await;
        let done = seen.iter().any(|s: &MusicState| s.playing) && !m.playing;
        seen.push(m);
        if done {
            break;
        }
    }
    let summary: Vec<(bool, Option<String>, usize)> = seen
        .iter()
        .map(|s| {
            (
                s.playing,
                s.current.as_ref().map(|t| t.name.clone()),
                s.queue.len(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (false, Some("first.wav".into()), 0),
            (false, Some("first.wav".into()), 1),
            (true, Some("first.wav".into()), 1),
            (true, Some("second.opus".into()), 0),
            (false, None, 0),
        ]
    );
    assert!(seen.iter().all(|s| s.at_ms.is_some()));
    // Stamped with the node's clock: the second track starts a first track's length after the
    // play took effect.
    let gap = seen[3].at_ms.unwrap() - seen[2].at_ms.unwrap();
    assert!((2_950..=3_100).contains(&gap), "{gap} ms");
    stdin.write_all(b"stop\n").await.unwrap();
    let done = expect("done").await;
    assert!(child.wait().await.unwrap().success());

    let now: MusicState = ann
        .get(&format!("/v1/sessions/{session}/music"))
        .await
        .unwrap();
    assert!(!now.playing && now.current.is_none());

    let x = audio::read_mono(&out).unwrap();
    println!(
        "bob recorded {:.2} s",
        done["recorded_seconds"].as_f64().unwrap()
    );
    for (hz, other, seconds) in [(TONE_1, TONE_2, SECONDS_1), (TONE_2, TONE_1, SECONDS_2)] {
        let heard = audio::analyse(&x, hz, other);
        println!(
            "{hz} Hz: heard at {:.1} Hz for {:.2} s of {seconds} s",
            heard.peak_hz, heard.seconds
        );
        assert!((heard.peak_hz - hz).abs() <= 2.0, "{heard:?}");
        assert!(
            (heard.seconds - seconds).abs() / seconds <= 0.15,
            "{hz} Hz for its track's length: {heard:?}"
        );
    }
    // In turn: the first tone's blocks all come before the second's.
    let dominant = |block: &[f64], hz: f64, other: f64| {
        let (p, q) = (
            audio::tone_power(block, hz),
            audio::tone_power(block, other),
        );
        p > 1e-3 / 16.0 && p > 10.0 * q
    };
    let blocks: Vec<&[f64]> = x.chunks_exact(audio::BLOCK).collect();
    let last_1 = blocks
        .iter()
        .rposition(|b| dominant(b, TONE_1, TONE_2))
        .unwrap();
    let first_2 = blocks
        .iter()
        .position(|b| dominant(b, TONE_2, TONE_1))
        .unwrap();
    assert!(last_1 < first_2, "{last_1} < {first_2}");

    let metrics = tests::node_metrics(&stack.media_url).await;
    let sent = tests::metric_sum(&metrics, "convoy_media_music_packets_total");
    assert!(sent >= 240.0, "5 s of music is 250 packets: {sent}");
    stack.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
