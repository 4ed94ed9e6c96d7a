//! End to end with a browser: headless Chromium joins a room over WHIP beside an aiortc client, and
//! each hears the other.
//!
//! Needs `CONVOY_TEST_PYTHON` (a Python with aiortc, as `e2e.rs`) and Chromium
//! (`CONVOY_TEST_CHROMIUM`, else `/usr/bin/chromium`).
//!
//! The test serves `clients/chromium_page.html` from a small HTTP server of its own on 127.0.0.1.
//! The page captures Chromium's fake microphone, fed a tone WAV, joins over WHIP with the join
//! token, plays what it receives and POSTs reports back: its ICE candidates, then `getStats()` and
//! the Web Audio spectrum every 200 ms. `clients/aiortc_peer.py` joins the same session, starts its
//! own tone on our word, and records what it hears; we check that recording by spectrum.
//!
//! Loopback only. This machine has a non-loopback interface, and Chromium gathers a host candidate
//! on every interface it sees, so its ICE checks could come from that address and the node would
//! answer to it. No browser flag limits candidates to loopback (the IP handling policies only
//! narrow them to the default route's interface, which is the wrong one). So the whole call runs
//! in a private network namespace whose only interface is `lo`: the test re-runs itself under
//! `unshare --net --pid` (as root, else in a user namespace), brings `lo` up, and only then starts
//! the stack, the aiortc client and Chromium. Nothing in there can reach another address, and the
//! test asserts it: the namespace lists only `lo`, and every candidate Chromium gathered, offered
//! and selected, and every candidate the node answered, is a loopback address. The new PID
//! namespace also ends every Chromium helper process when the test exits. Without `unshare`
//! rights the test is skipped (a failure under `CONVOY_REQUIRE_EXTERNAL=1`); it never runs the
//! call outside the namespace.

use convoy::dev::{DevConfig, DevStack};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tests::api::User;
use tests::audio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{ChildStdout, Command};
use tokio::sync::mpsc;

const TEST_NAME: &str = "chromium_and_aiortc_hear_each_other";
/// Set in the environment of the run inside the private network namespace.
const IN_NETNS: &str = "CONVOY_TEST_CHROMIUM_NETNS";
/// `unshare` arguments for a namespace with only `lo`: as root, else as root of a user namespace.
const NETNS_MODES: [&[&str]; 2] = [
    &["--net", "--pid", "--fork", "--kill-child", "--mount-proc"],
    &[
        "--user",
        "--map-root-user",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
    ],
];
/// A fresh network namespace has `lo` down.
const LO_UP: &str = "ip link set lo up && exec \"$@\"";

const AIORTC_HZ: f64 = 440.0;
/// Not a harmonic of the other tone.
const CHROMIUM_HZ: f64 = 750.0;
const TONE_SECONDS: f64 = 4.0;
const PAGE: &str = include_str!("../clients/chromium_page.html");

#[test]
fn chromium_and_aiortc_hear_each_other() {
    let Some(python) = tests::external("CONVOY_TEST_PYTHON", "Chromium end-to-end call (aiortc)")
    else {
        return;
    };
    let Some(chromium) = tests::external_program(
        "CONVOY_TEST_CHROMIUM",
        "/usr/bin/chromium",
        "Chromium end-to-end call",
    ) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var(IN_NETNS).is_ok_and(|v| v == "1") {
        rt.block_on(call(&python, &chromium));
    } else {
        rt.block_on(rerun_in_private_netns());
    }
}

/// Runs this test again inside a new network and PID namespace with only `lo`, and passes or fails
/// with it.
async fn rerun_in_private_netns() {
    let mut mode = None;
    for m in NETNS_MODES {
        let probe = Command::new("unshare")
            .args(m)
            .args(["--", "sh", "-c", LO_UP, "sh", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if probe.is_ok_and(|s| s.success()) {
            mode = Some(m);
            break;
        }
    }
    let Some(mode) = mode else {
        tests::missing(
            "Chromium end-to-end call",
            "no private network namespace: `unshare --net` (util-linux) and `ip` (iproute2) must \
             work, as root or in a user namespace",
        );
        return;
    };
    println!("re-running inside: unshare {}", mode.join(" "));
    let mut child = Command::new("unshare")
        .args(mode)
        .args(["--", "sh", "-c", LO_UP, "sh"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("unshare runs");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let forward_err = tokio::spawn(async move {
        while let Ok(Some(line)) = err.next_line().await {
            eprintln!("{line}");
        }
    });
    let run = async {
        let mut passed = false;
        while let Some(line) = out.next_line().await.unwrap() {
            println!("{line}");
            passed |= line.contains("test result: ok. 1 passed");
        }
        (passed, child.wait().await.unwrap())
    };
    let (passed, status) = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the run in the private namespace finishes within five minutes");
    let _ = forward_err.await;
    assert!(
        status.success(),
        "the run in the namespace failed: {status}"
    );
    assert!(passed, "the run in the namespace ran and passed this test");
}

/// The interfaces of this process's network namespace.
fn interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/self/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_string()))
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("convoy-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What the page server shares with the test.
#[derive(Debug)]
struct Page {
    /// `GET /config`.
    config: String,
    /// Every report the page POSTs.
    reports: mpsc::UnboundedSender<Value>,
    /// The answer to the page's next report: stop reporting and leave.
    stop: AtomicBool,
}

/// A minimal HTTP/1.1 server for the page: one request per connection. Chromium also opens
/// connections it closes unused (preconnects), so a connection's I/O error is only logged; a
/// report that is not JSON fails the test.
async fn serve_page(listener: TcpListener, page: Arc<Page>) {
    while let Ok((sock, _)) = listener.accept().await {
        let page = page.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(sock, &page).await {
                eprintln!("page server: {e}");
            }
        });
    }
}

async fn handle(sock: TcpStream, page: &Page) -> anyhow::Result<()> {
    let mut reader = BufReader::new(sock);
    let mut request = String::new();
    if reader.read_line(&mut request).await? == 0 {
        return Ok(());
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    anyhow::ensure!(length <= 1 << 20, "request body of {length} bytes");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        ("GET", "/config") => ("200 OK", "application/json", page.config.clone()),
        ("POST", "/report") => {
            let report = serde_json::from_slice(&body).unwrap_or_else(
                |e| json!({"event": "error", "message": format!("a report that is not JSON: {e}")}),
            );
            let _ = page.reports.send(report);
            let stop = page.stop.load(Ordering::SeqCst);
            (
                "200 OK",
                "application/json",
                json!({ "stop": stop }).to_string(),
            )
        }
        _ => ("404 Not Found", "text/plain", "not found".to_string()),
    };
    let mut sock = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await?;
    Ok(())
}

/// The aiortc client's stdout: one JSON event per line.
struct Aiortc {
    lines: Lines<BufReader<ChildStdout>>,
}

impl Aiortc {
    async fn expect(&mut self, event: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(90), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("aiortc client: no {event:?} within 90 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("aiortc client exited before {event:?}"));
        let msg: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("aiortc client printed non-JSON {line:?}: {e}"));
        assert_eq!(msg["event"], event, "aiortc client: {msg}");
        msg
    }
}

/// The next report of the page (an `error` report fails the test).
async fn next_report(
    reports: &mut mpsc::UnboundedReceiver<Value>,
    log: &Path,
    within: Duration,
) -> Value {
    let report = tokio::time::timeout(within, reports.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no report from the Chromium page within {within:?}; its log: {}",
                log.display()
            )
        })
        .expect("the page server runs");
    if report["event"] == "error" {
        panic!(
            "the Chromium page failed: {}\n(its log: {})",
            report["message"].as_str().unwrap_or_default(),
            log.display()
        );
    }
    report
}

/// Awaits `fut`, failing the test after `secs` seconds.
async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s waiting for {what}"))
}

/// Asserts that `candidate.address` is a loopback address; `what` says where it came from.
fn assert_loopback(candidate: &Value, what: &str) {
    let address = candidate["address"].as_str().unwrap_or_default();
    let ip: IpAddr = address
        .parse()
        .unwrap_or_else(|_| panic!("{what}: not an IP address: {candidate}"));
    assert!(ip.is_loopback(), "{what}: not loopback: {candidate}");
}

/// `inbound.field` of a stats report, as a number.
fn inbound(report: &Value, field: &str) -> f64 {
    report["inbound"][field].as_f64().unwrap_or(0.0)
}

async fn call(python: &str, chromium: &str) {
    // Refuse to run anywhere but in the loopback-only namespace.
    let ifaces = interfaces();
    println!("network namespace interfaces: {ifaces:?}");
    assert_eq!(ifaces, ["lo"], "the call runs where only loopback exists");

    let dir = temp_dir("chromium");
    let mut config = DevConfig::ephemeral(dir.join("data"));
    config.cores = 1;
    let stack = DevStack::start(config).await.unwrap();

    let (aiortc_wav, chromium_wav) = (dir.join("aiortc_tone.wav"), dir.join("chromium_tone.wav"));
    audio::write_tone(&aiortc_wav, AIORTC_HZ, TONE_SECONDS, 0.5).unwrap();
    // Chromium loops its file: two seconds hold a whole number of periods, so the loop is seamless.
    audio::write_tone(&chromium_wav, CHROMIUM_HZ, 2.0, 0.5).unwrap();
    let heard_by_aiortc = dir.join("heard_by_aiortc.wav");

    // Two users of one group, one session: the browser's user opens it, the other joins.
    let alice = User::register(&stack.control_plane_url, "chromium")
        .await
        .unwrap();
    let bob = User::register(&stack.control_plane_url, "aiortc")
        .await
        .unwrap();
    let group = alice.create_group("Browser call").await.unwrap();
    bob.accept(&alice.invite(&group).await.unwrap())
        .await
        .unwrap();
    let (status_a, alloc_a) = alice.allocate(&group).await.unwrap();
    let (status_b, alloc_b) = bob.allocate(&group).await.unwrap();
    assert_eq!((status_a, status_b), (201, 200), "created, then joined");
    assert_eq!(alloc_a.session, alloc_b.session, "one session");

    let mut aiortc = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/aiortc_peer.py"))
        .args(["--whip-url", &alloc_b.candidates[0].whip_url])
        .args(["--join-token", &alloc_b.join_token])
        .arg("--wav")
        .arg(&aiortc_wav)
        .arg("--out")
        .arg(&heard_by_aiortc)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the Python in CONVOY_TEST_PYTHON runs");
    let mut aiortc_in = aiortc.stdin.take().unwrap();
    let mut aiortc_out = Aiortc {
        lines: BufReader::new(aiortc.stdout.take().unwrap()).lines(),
    };
    aiortc_out.expect("connected").await;
    println!("aiortc: connected, sending silence");

    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let page = Arc::new(Page {
        config: json!({
            "whip_url": alloc_a.candidates[0].whip_url,
            "join_token": alloc_a.join_token,
        })
        .to_string(),
        reports: reports_tx,
        stop: AtomicBool::new(false),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(serve_page(listener, page.clone()));

    let log = dir.join("chromium.log");
    let mut browser = Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-crash-reporter",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium-profile").display()
        ))
        .args([
            // The fake microphone plays this file in a loop; the permission prompt says yes.
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
        ])
        .arg(format!(
            "--use-file-for-fake-audio-capture={}",
            chromium_wav.display()
        ))
        .args([
            // ICE on 127.0.0.1 (Chromium skips loopback by default), and real addresses in the
            // candidates rather than mDNS names.
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            // Play the remote audio (and so decode it) without a user gesture.
            "--autoplay-policy=no-user-gesture-required",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(&page_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("Chromium starts");

    // Connected: every ICE candidate on either side is loopback.
    let connected = next_report(&mut reports, &log, Duration::from_secs(60)).await;
    assert_eq!(connected["event"], "connected", "{connected}");
    println!("chromium: {}", connected["user_agent"]);
    println!(
        "chromium: gathered {}; offered {}; in stats {}; selected {}",
        connected["gathered"],
        connected["offer_candidates"],
        connected["stats_local_candidates"],
        connected["selected_pair"]
    );
    println!(
        "node answered candidates {} and codecs {}",
        connected["answer_candidates"], connected["answer_codecs"]
    );
    for list in [
        "gathered",
        "offer_candidates",
        "stats_local_candidates",
        "answer_candidates",
    ] {
        let candidates = connected[list].as_array().unwrap();
        assert!(!candidates.is_empty(), "{list}: none");
        for c in candidates {
            assert_loopback(c, list);
        }
    }
    assert_loopback(&connected["selected_pair"]["local"], "selected local");
    assert_loopback(&connected["selected_pair"]["remote"], "selected remote");

    // Silence first: aiortc sends silent frames until told to start. Wait for a second of them.
    let baseline = within(30, "a second of silence received by Chromium", async {
        loop {
            let r = next_report(&mut reports, &log, Duration::from_secs(10)).await;
            if inbound(&r, "totalSamplesDuration") >= 1.0 {
                break r;
            }
        }
    })
    .await;
    println!(
        "chromium before the tone: {} samples ({:.2} s), energy {:.6}, level {}",
        inbound(&baseline, "totalSamplesReceived"),
        inbound(&baseline, "totalSamplesDuration"),
        inbound(&baseline, "totalAudioEnergy"),
        inbound(&baseline, "audioLevel")
    );

    aiortc_in.write_all(b"start\n").await.unwrap();
    aiortc_in.flush().await.unwrap();
    aiortc_out.expect("started").await;
    let mut during = Vec::new();
    let done = within(60, "the aiortc client's tone and recording", async {
        loop {
            tokio::select! {
                r = next_report(&mut reports, &log, Duration::from_secs(10)) => during.push(r),
                d = aiortc_out.expect("done") => break d,
            }
        }
    })
    .await;
    page.stop.store(true, Ordering::SeqCst);
    let left = within(30, "Chromium leaving", async {
        loop {
            let r = next_report(&mut reports, &log, Duration::from_secs(10)).await;
            if r["event"] == "left" {
                break r;
            }
        }
    })
    .await;
    assert!(
        matches!(left["delete_status"].as_u64(), Some(200 | 204)),
        "Chromium left over WHIP DELETE: {left}"
    );
    browser.start_kill().unwrap();
    browser.wait().await.unwrap();
    server.abort();
    let status = aiortc.wait().await.unwrap();
    assert!(status.success(), "aiortc client exited with {status}");

    // Chromium heard aiortc: samples kept coming, with energy far above the silence before.
    let last = during.last().expect("stats while the tone played");
    let samples =
        inbound(last, "totalSamplesReceived") - inbound(&baseline, "totalSamplesReceived");
    let seconds =
        inbound(last, "totalSamplesDuration") - inbound(&baseline, "totalSamplesDuration");
    let energy = inbound(last, "totalAudioEnergy") - inbound(&baseline, "totalAudioEnergy");
    let silent_power =
        inbound(&baseline, "totalAudioEnergy") / inbound(&baseline, "totalSamplesDuration");
    let power = energy / seconds.max(1e-9);
    let max_level = during
        .iter()
        .map(|r| inbound(r, "audioLevel"))
        .fold(0.0, f64::max);
    let mut peaks: Vec<f64> = during
        .iter()
        .filter(|r| inbound(r, "audioLevel") > 0.1)
        .filter_map(|r| r["peak_hz"].as_f64())
        .collect();
    peaks.sort_by(f64::total_cmp);
    let median_peak = peaks.get(peaks.len() / 2).copied().unwrap_or(0.0);
    println!(
        "chromium during the tone: {samples} samples ({seconds:.2} s), mean power {power:.4} \
         (silence before: {silent_power:.2e}), max audioLevel {max_level:.3}, heard {median_peak:.1} Hz \
         (median of {} loud reports)",
        peaks.len()
    );
    let sent = done["sent_seconds"].as_f64().unwrap();
    assert!((sent - TONE_SECONDS).abs() < 1e-6, "{done}");
    assert!(
        samples >= 0.9 * 48_000.0 * sent,
        "Chromium received samples all along: {samples}"
    );
    assert!(
        seconds >= 0.9 * sent,
        "Chromium received audio all along: {seconds} s"
    );
    assert!(
        max_level >= 0.1,
        "Chromium's audioLevel rose well above silence: {max_level}"
    );
    assert!(
        inbound(&baseline, "audioLevel") < 0.01,
        "and was silent before the tone: {baseline}"
    );
    assert!(
        power >= 0.01 && power >= 100.0 * silent_power,
        "Chromium's received energy is far above silence: {power} vs {silent_power}"
    );
    assert!(
        peaks.len() >= 10 && (median_peak - AIORTC_HZ).abs() <= 3.0,
        "Chromium hears aiortc's {AIORTC_HZ} Hz, not its own {CHROMIUM_HZ} Hz: {peaks:?}"
    );

    // aiortc heard Chromium's tone, and never itself.
    let recorded = done["recorded_seconds"].as_f64().unwrap();
    let x = audio::read_mono(&heard_by_aiortc).unwrap();
    let heard = audio::analyse(&x, CHROMIUM_HZ, AIORTC_HZ);
    println!(
        "aiortc: heard {:.1} Hz for {:.3} s of {recorded:.3} s recorded; own tone at {:.1} dB relative",
        heard.peak_hz, heard.seconds, heard.leakage_db
    );
    assert!(
        (heard.peak_hz - CHROMIUM_HZ).abs() <= 2.0,
        "aiortc hears Chromium's tone: {heard:?}"
    );
    assert!(
        heard.seconds >= 0.9 * recorded,
        "aiortc hears it all along: {heard:?}"
    );
    assert!(
        heard.leakage_db < -30.0,
        "aiortc does not hear itself: {heard:?}"
    );

    // Neither Chromium nor aiortc negotiates NACK for audio: the node sealed every packet it
    // forwarded to them on its fast path (`shard/fast.rs`), and both played it.
    let metrics = tests::node_metrics(&stack.media_url).await;
    let forwarded = tests::metric_sum(&metrics, "convoy_media_rtp_packets_forwarded_total");
    let fast = tests::metric_sum(&metrics, "convoy_media_rtp_forwarded_fast_total");
    println!("node: {forwarded} RTP packets forwarded, {fast} of them on the fast path");
    assert!(
        forwarded >= 2.0 * 50.0 * 0.9 * TONE_SECONDS,
        "both directions forwarded: {forwarded}"
    );
    assert_eq!(fast, forwarded, "all on the fast path");

    stack.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
