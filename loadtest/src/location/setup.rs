//! What a location run needs besides its clients: its own token signer and a JWKS server (no
//! control plane: 10,000 accounts through argon2 would take minutes, and token issue is not the
//! path under test), and, unless `--target` names one, the location engine on a thread of its
//! own.

use anyhow::Context as _;
use location_engine::server::{LocationServer, ServerConfig};
use protocol::api::Jwks;
use protocol::ids::{GroupId, UserId};
use protocol::location::{Grant, LocationClaims, MAX_TOKEN_SECS, Precision};
use protocol::token::{AUD_LOCATION, Signer, TokenKind};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// The proximity radius every group is granted, metres.
pub const NEAR_M: u32 = 200;

/// A signer with a fresh random key.
pub fn signer() -> Signer {
    // Two v4 UUIDs: 244 random bits from the OS.
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    Signer::from_seed(&seed)
}

/// Now, Unix seconds.
pub fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A location token for `user` sharing exactly with `group` (proximity at [`NEAR_M`]), valid for
/// the longest a location token may live.
pub fn token(signer: &Signer, user: UserId, group: GroupId) -> String {
    let iat = unix_s();
    signer.sign(&LocationClaims {
        iss: "loadtest".into(),
        sub: user,
        aud: AUD_LOCATION.into(),
        typ: TokenKind::Location,
        iat,
        exp: iat + MAX_TOKEN_SECS,
        jti: uuid::Uuid::new_v4().to_string(),
        groups: vec![Grant {
            grp: group,
            precision: Precision::Exact,
            until: None,
            near_m: NEAR_M,
            places: 0,
        }],
        hist: false,
    })
}

/// A tiny HTTP server that answers every request with the run's JWKS.
#[derive(Debug)]
pub struct JwksServer {
    /// The URL to give the engine (`--jwks-url`).
    pub url: String,
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl JwksServer {
    /// Serves `jwks` on 127.0.0.1 at an ephemeral port, or on every interface at `port`.
    pub fn start(jwks: &Jwks, port: Option<u16>) -> anyhow::Result<Self> {
        let bind = match port {
            Some(p) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, p)),
            None => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        };
        let listener = TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, listener.local_addr()?.port()));
        let body = serde_json::to_string(jwks)?;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("loadtest-jwks".into())
                .spawn(move || serve(&listener, response.as_bytes(), &stop))?
        };
        Ok(Self {
            url: format!("http://{local}/.well-known/jwks.json"),
            local,
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(listener: &TcpListener, response: &[u8], stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        // Read the request head (bodies are not expected), then answer and close.
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = conn.write_all(response);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept call, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The CPU time (user and system) of the calling thread.
pub fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(
                u64::try_from(tv.tv_sec()).unwrap_or(0),
                u32::try_from(tv.tv_usec()).unwrap_or(0) * 1000,
            )
        };
        t(u.user_time()) + t(u.system_time())
    })
}

/// The location engine on an OS thread of its own: a tokio current-thread runtime (pinned to a
/// CPU when asked) running the real [`LocationServer`] on 127.0.0.1, so what it does per second
/// is what one core does.
#[derive(Debug)]
pub struct InProcessEngine {
    pub addr: SocketAddr,
    cpu: mpsc::UnboundedSender<oneshot::Sender<Duration>>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    thread: Option<JoinHandle<()>>,
}

impl InProcessEngine {
    /// Starts the engine and waits until it listens.
    pub fn start(jwks_url: String, cpu: Option<usize>) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<SocketAddr>>();
        let (cpu_tx, mut cpu_rx) = mpsc::unbounded_channel::<oneshot::Sender<Duration>>();
        let (stop_tx, stop_rx) = oneshot::channel::<oneshot::Sender<()>>();
        let thread = std::thread::Builder::new()
            .name("location-engine".into())
            .spawn(move || {
                let runtime = (|| {
                    if let Some(cpu) = cpu {
                        crate::pin::to_cpu(cpu)
                            .with_context(|| format!("pinning the engine to CPU {cpu}"))?;
                    }
                    Ok(tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?)
                })();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let server = match LocationServer::start(ServerConfig {
                        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                        jwks_url,
                        alerts: None,
                        history: None,
                        control_plane_url: None,
                    })
                    .await
                    {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(server.addr()));
                    let mut stop_rx = stop_rx;
                    let done = loop {
                        tokio::select! {
                            done = &mut stop_rx => break done.ok(),
                            ask = cpu_rx.recv() => match ask {
                                Some(reply) => { let _ = reply.send(thread_cpu()); }
                                None => break None,
                            },
                        }
                    };
                    server.shutdown().await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                });
            })?;
        let addr = ready_rx
            .recv()
            .context("the engine thread ended before it listened")??;
        Ok(Self {
            addr,
            cpu: cpu_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The engine thread's CPU time so far.
    pub async fn cpu_time(&self) -> Option<Duration> {
        let (tx, rx) = oneshot::channel();
        self.cpu.send(tx).ok()?;
        rx.await.ok()
    }

    /// Closes every stream and stops the engine; resolves when it has stopped.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let (tx, rx) = oneshot::channel();
            if stop.send(tx).is_ok() {
                let _ = rx.await;
            }
        }
    }
}

impl Drop for InProcessEngine {
    fn drop(&mut self) {
        // Without a shutdown first, dropping the stop sender ends the loop all the same.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwks_server_answers_any_request_with_the_keys() {
        let signer = signer();
        let jwks = Jwks {
            keys: vec![signer.jwk()],
        };
        let server = JwksServer::start(&jwks, None).unwrap();
        for path in ["/.well-known/jwks.json", "/anything"] {
            let mut conn = TcpStream::connect(server.local).unwrap();
            write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
            assert!(answer.contains("Content-Type: application/json"));
            let body = answer.split("\r\n\r\n").nth(1).unwrap();
            let back: Jwks = serde_json::from_str(body).unwrap();
            assert_eq!(back.keys[0].kid, signer.kid());
        }
        drop(server);
    }

    #[test]
    fn tokens_verify_against_the_served_keys() {
        let signer = signer();
        let keys = protocol::token::VerifyingKeys::from_jwks(&Jwks {
            keys: vec![signer.jwk()],
        });
        let (user, group) = (
            UserId::from_uuid(uuid::Uuid::new_v4()),
            GroupId::from_uuid(uuid::Uuid::new_v4()),
        );
        let claims: LocationClaims = keys
            .verify(&token(&signer, user, group), AUD_LOCATION, unix_s(), 0)
            .unwrap();
        assert_eq!(claims.sub, user);
        assert_eq!(claims.groups[0].grp, group);
        assert!(claims.exp - claims.iat <= MAX_TOKEN_SECS);
    }
}
