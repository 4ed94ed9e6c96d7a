//! The join path, as a client takes it: register, create a group, allocate its audio session
//! (REST), then POST an SDP offer to the node's WHIP URL with the join token. Runs on its own
//! thread with a small tokio runtime and hands each joined client to the engine.

use super::{Plan, Role, SfuArgs, ToEngine};
use anyhow::{Context, anyhow, bail};
use protocol::api::{AuthResponse, GroupView, SessionAllocation};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Rtc};
use tokio::sync::Semaphore;

/// A client whose WHIP offer was answered; the engine connects it.
#[derive(Debug)]
pub struct Joined {
    pub plan: Plan,
    pub rtc: Rtc,
    pub socket: UdpSocket,
    /// The m-line it publishes on (speakers).
    pub send_mid: Option<Mid>,
    /// Its connection's SRTP keys, once the handshake exports them.
    pub keys: rtp_fast::KeyCapture,
}

/// One room's owner: a user with a group whose audio session the room's clients join.
struct RoomOwner {
    token: String,
    group: GroupView,
}

/// Runs the whole join phase; every client that joined is sent to the engine as it joins.
pub fn run(args: SfuArgs, plans: Vec<Plan>, cert: DtlsCert, tx: Sender<ToEngine>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(ToEngine::SetupFailed(format!("tokio runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let base = args.control_plane.trim_end_matches('/').to_string();
        // Room owners first: each costs a password hash on the control plane.
        let mut owners = Vec::with_capacity(args.rooms);
        for room in 0..args.rooms {
            match room_owner(&http, &base, room).await {
                Ok(o) => owners.push(Arc::new(o)),
                Err(e) => {
                    let _ = tx.send(ToEngine::SetupFailed(format!("room {room}: {e:#}")));
                    return;
                }
            }
        }
        let permits = Arc::new(Semaphore::new(args.join_concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for plan in plans {
            let owner = owners[plan.room as usize].clone();
            let (http, base, cert, tx, permits) = (
                http.clone(),
                base.clone(),
                cert.clone(),
                tx.clone(),
                permits.clone(),
            );
            tasks.spawn(async move {
                let Ok(_permit) = permits.acquire().await else {
                    return;
                };
                let what = format!("client {} (room {})", plan.index, plan.room);
                match join(&http, &base, &owner, plan, cert).await {
                    Ok((joined, metrics_url)) => {
                        let _ = tx.send(ToEngine::Joined(Box::new(joined), metrics_url));
                    }
                    Err(e) => {
                        let _ = tx.send(ToEngine::JoinFailed(format!("{what}: {e:#}")));
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let _ = tx.send(ToEngine::SetupDone);
    });
}

async fn post_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> anyhow::Result<T> {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = res.status();
    let text = res.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("POST {url}: {text}"))
}

async fn room_owner(http: &reqwest::Client, base: &str, room: usize) -> anyhow::Result<RoomOwner> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let auth: AuthResponse = post_json(
        http,
        &format!("{base}/v1/auth/register"),
        None,
        serde_json::json!({
            "username": format!("lt{room}_{}", &tag[..10]),
            "email": format!("loadtest.{}@example.com", &tag[..16]),
            "password": format!("loadtest passphrase {tag}"),
        }),
    )
    .await?;
    let group: GroupView = post_json(
        http,
        &format!("{base}/v1/groups"),
        Some(&auth.access_token),
        serde_json::json!({ "name": format!("loadtest room {room}") }),
    )
    .await?;
    Ok(RoomOwner {
        token: auth.access_token,
        group,
    })
}

/// Allocates (joins) the room's session, offers over WHIP and applies the answer. Returns the
/// joined client and the node's metrics URL.
async fn join(
    http: &reqwest::Client,
    base: &str,
    owner: &RoomOwner,
    plan: Plan,
    cert: DtlsCert,
) -> anyhow::Result<(Joined, String)> {
    let alloc: SessionAllocation = post_json(
        http,
        &format!("{base}/v1/groups/{}/sessions", owner.group.id),
        Some(&owner.token),
        serde_json::json!({ "kind": "audio" }),
    )
    .await?;
    let whip_url = alloc
        .candidates
        .first()
        .map(|c| c.whip_url.clone())
        .ok_or_else(|| anyhow!("the allocation names no media node"))?;
    let metrics_url = match whip_url.find("/v1/whip/") {
        Some(i) => format!("{}/metrics", &whip_url[..i]),
        None => bail!("unexpected WHIP URL {whip_url}"),
    };

    let socket = UdpSocket::bind("127.0.0.1:0").context("binding a client socket")?;
    socket.set_nonblocking(true)?;
    super::recv::enable_timestamps(&socket).context("SO_TIMESTAMPNS on a client socket")?;
    let local: SocketAddr = socket.local_addr()?;
    let (mut rtc, send_mid, offer, pending, keys) = offer(&plan, local, cert)?;

    let res = http
        .post(&whip_url)
        .bearer_auth(&alloc.join_token)
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .with_context(|| format!("POST {whip_url}"))?;
    let status = res.status();
    let text = res.text().await?;
    if status.as_u16() != 201 {
        bail!("WHIP {whip_url}: {status}: {text}");
    }
    let answer = SdpAnswer::from_sdp_string(&text).context("the WHIP answer")?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .context("applying the answer")?;
    Ok((
        Joined {
            plan,
            rtc,
            socket,
            send_mid,
            keys,
        },
        metrics_url,
    ))
}

type Offered = (
    Rtc,
    Option<Mid>,
    String,
    SdpPendingOffer,
    rtp_fast::KeyCapture,
);

/// A client's `Rtc` and offer: a speaker offers one send-receive m-line and enough receive-only
/// ones to hear every other speaker; a listener offers one receive-only m-line per speaker.
fn offer(plan: &Plan, local: SocketAddr, cert: DtlsCert) -> anyhow::Result<Offered> {
    let (mut rtc, keys) = rtp_fast::capture::capturing(|| {
        Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .set_dtls_cert(cert)
            .set_crypto_provider(rtp_fast::capture::crypto_provider())
            .build(Instant::now())
    });
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut api = rtc.sdp_api();
    let (send_mid, receive_only) = match plan.role {
        Role::Speaker => (
            Some(api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None)),
            plan.voices.saturating_sub(1),
        ),
        Role::Listener => (None, plan.voices),
    };
    for _ in 0..receive_only {
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    }
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("str0m made no offer"))?;
    let offer: SdpOffer = offer;
    Ok((rtc, send_mid, offer.to_sdp_string(), pending, keys))
}
