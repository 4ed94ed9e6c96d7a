//! WHIP (RFC 9725) on the node's HTTP port: `POST /v1/whip/{session}` with an SDP offer and a join
//! token → `201 Created`, `Location`, SDP answer; `DELETE` the Location to leave.
//!
//! Every refusal is an RFC 9457 problem+json with a 4xx status; nothing a client sends can stop the
//! calls in progress. Rooms are placed here: a session's room goes to the core that already hosts it,
//! else to the least-loaded core.

use crate::auth::{AuthError, JoinVerifier};
use crate::music::{MusicError, Track};
use crate::participant::{Grants, ParticipantKey};
use crate::runtime::{Command, CoreLoad};
use crate::shard::{JoinError, JoinRequest, MusicRefusal};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use protocol::api::Moderation;
use protocol::api::{PROBLEM_JSON, Problem};
use protocol::ids::AttachmentId;
use protocol::music::{MusicAction, MusicState, MusicTrack};
use protocol::{ParticipantId, SessionId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tower_http::cors::{Any, CorsLayer};

/// Largest SDP offer accepted.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Largest music file the control plane may hand over.
pub const MAX_TRACK_BYTES: usize = 100 << 20;
/// Music files decoded at once: transcoding runs off the media cores, and at most this many
/// threads compete with them for the CPU.
pub(crate) const TRANSCODES_AT_ONCE: usize = 1;

/// A core as the HTTP side sees it.
#[derive(Debug, Clone)]
pub(crate) struct CoreRef {
    pub commands: async_channel::Sender<Command>,
    pub load: Arc<CoreLoad>,
}

/// Where rooms and WHIP resources live.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// Session → (core, participants placed or joining there).
    sessions: HashMap<SessionId, (u16, u32)>,
    /// WHIP resource (participant id) → (core, participant, session).
    resources: HashMap<ParticipantId, (u16, ParticipantKey, SessionId)>,
    by_participant: HashMap<(u16, ParticipantKey), ParticipantId>,
}

impl Placement {
    /// The core for a new participant of `session`, counted as placed there.
    fn place(&mut self, session: SessionId, cores: &[CoreRef]) -> u16 {
        if !self.sessions.contains_key(&session) {
            // Least loaded by what is placed here (joins in flight included), not by the cores'
            // counters, which lag behind a burst of joins.
            let mut placed = vec![0u32; cores.len().max(1)];
            for &(core, n) in self.sessions.values() {
                if let Some(p) = placed.get_mut(usize::from(core)) {
                    *p += n;
                }
            }
            let core = placed
                .iter()
                .enumerate()
                .min_by_key(|&(_, n)| *n)
                .map_or(0, |(i, _)| i as u16);
            self.sessions.insert(session, (core, 0));
        }
        let entry = self.sessions.entry(session).or_insert((0, 0));
        entry.1 += 1;
        entry.0
    }

    /// Undoes one [`Placement::place`] (the join failed or the participant left).
    fn unplace(&mut self, session: SessionId) {
        if let Some(e) = self.sessions.get_mut(&session) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                self.sessions.remove(&session);
            }
        }
    }

    /// A participant left its core: forget its resource and release its place.
    pub fn left(&mut self, core: u16, participant: ParticipantKey) {
        if let Some(res) = self.by_participant.remove(&(core, participant))
            && let Some((_, _, session)) = self.resources.remove(&res)
        {
            self.unplace(session);
        }
    }
}

/// State of the signaling routes.
#[derive(Debug)]
pub(crate) struct Signaling {
    pub verifier: JoinVerifier,
    pub cores: Vec<CoreRef>,
    pub placement: Mutex<Placement>,
    /// Draining: calls in progress go on (their members may still join), no new room starts.
    pub draining: AtomicBool,
    /// Admits the transcoding of music files.
    pub transcodes: tokio::sync::Semaphore,
}

impl Signaling {
    fn placement(&self) -> std::sync::MutexGuard<'_, Placement> {
        self.placement.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The core hosting `session`'s room, if it is placed here.
    fn core_of(&self, session: SessionId) -> Option<u16> {
        self.placement()
            .sessions
            .get(&session)
            .map(|&(core, _)| core)
    }
}

/// The node's HTTP routes.
pub(crate) fn router(state: Arc<Signaling>) -> Router {
    // A browser page on any origin may join: WHIP authenticates with a bearer token, never a
    // cookie, so no origin gains anything the token does not already grant. The answer's
    // `Location` (the resource to DELETE when leaving) must be readable by the page.
    let whip_cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::LOCATION])
        .max_age(std::time::Duration::from_secs(600));
    let whip = Router::new()
        .route("/v1/whip/{session}", post(whip_post))
        .route("/v1/whip/{session}/{resource}", delete(whip_delete))
        .layer(whip_cors);
    Router::new()
        .merge(whip)
        .route(
            "/v1/admin/sessions/{session}/participants/{participant}",
            post(moderate),
        )
        .route("/v1/admin/sessions/{session}/music", post(music))
        .route(
            "/v1/admin/sessions/{session}/music/tracks",
            post(queue_track),
        )
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            problem(StatusCode::NOT_FOUND, "not-found", "No such resource", None)
        })
        .layer(DefaultBodyLimit::max(MAX_OFFER_BYTES))
        .with_state(state)
}

async fn whip_post(
    State(sig): State<Arc<Signaling>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(session) = session.parse::<SessionId>() else {
        return problem(StatusCode::NOT_FOUND, "not-found", "No such session", None);
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
    {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "A WHIP offer must be application/sdp",
            None,
        );
    }
    let bearer = bearer(&headers);
    let claims = match bearer {
        None => return unauthorized(AuthError::Missing),
        Some(t) => match sig.verifier.verify(t).await {
            Ok(c) => c,
            Err(AuthError::KeysUnavailable) => {
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "keys-unavailable",
                    "The node cannot verify tokens right now",
                    None,
                );
            }
            Err(e) => return unauthorized(e),
        },
    };
    if claims.sid != session {
        return problem(
            StatusCode::FORBIDDEN,
            "wrong-session",
            "The join token is for another session",
            None,
        );
    }
    if !claims.consistent() {
        return problem(
            StatusCode::FORBIDDEN,
            "inconsistent-token",
            "The join token grants mixing of an end-to-end encrypted session",
            None,
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return problem(
                e.status(),
                "bad-body",
                "The request body could not be read",
                Some(e.body_text()),
            );
        }
    };
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "malformed-offer",
            "The SDP offer is not UTF-8",
            None,
        );
    };

    // Placing, joining and registering run on a task of their own: a client that hangs up
    // mid-request must not leave a placement behind without its resource.
    let sig = sig.clone();
    let user = claims.sub;
    let grants = Grants {
        publish: claims.publish,
        subscribe: claims.sub_media,
        admin: claims.admin,
        music_ctl: claims.music_ctl,
    };
    let e2ee = claims.e2ee;
    let music = claims.kind == protocol::api::SessionKind::Music;
    match tokio::spawn(join(sig, session, user, grants, e2ee, music, offer)).await {
        Ok(res) => res,
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The join failed",
            None,
        ),
    }
}

/// Places the session's room, joins the participant on its core and registers its resource.
async fn join(
    sig: Arc<Signaling>,
    session: SessionId,
    user: protocol::UserId,
    grants: Grants,
    e2ee: bool,
    music: bool,
    offer: String,
) -> Response {
    let id = ParticipantId::from_uuid(uuid::Uuid::new_v4());
    let core = {
        let mut placement = sig.placement();
        if sig.draining.load(Ordering::Relaxed) && !placement.sessions.contains_key(&session) {
            drop(placement);
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "The node is draining and takes no new sessions",
                None,
            );
        }
        placement.place(session, &sig.cores)
    };
    let (reply, answer) = oneshot::channel();
    let req = JoinRequest {
        id,
        session,
        user,
        grants,
        e2ee,
        offer,
        music,
    };
    let sent = sig.cores[usize::from(core)]
        .commands
        .send(Command::Join { req, reply })
        .await;
    let result = match sent {
        Ok(()) => answer.await.ok(),
        Err(_) => None,
    };
    match result {
        Some(Ok(joined)) => {
            {
                let mut p = sig.placement();
                p.resources.insert(id, (core, joined.participant, session));
                p.by_participant.insert((core, joined.participant), id);
            }
            let location = format!("/v1/whip/{session}/{id}");
            let mut res = (StatusCode::CREATED, joined.answer).into_response();
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, v);
            }
            res
        }
        Some(Err(e)) => {
            sig.placement().unplace(session);
            if let JoinError::E2eeMismatch { .. } = e {
                return problem(
                    StatusCode::CONFLICT,
                    "e2ee-mismatch",
                    "The room's end-to-end encryption and the join token's disagree",
                    Some(e.to_string()),
                );
            }
            let status = match e {
                JoinError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            problem(
                status,
                "offer-refused",
                "The SDP offer was refused",
                Some(e.to_string()),
            )
        }
        None => {
            sig.placement().unplace(session);
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "core-unavailable",
                "The media core is not running",
                None,
            )
        }
    }
}

async fn whip_delete(
    State(sig): State<Arc<Signaling>>,
    Path((session, resource)): Path<(String, String)>,
) -> Response {
    let found = resource
        .parse::<ParticipantId>()
        .ok()
        .and_then(|id| sig.placement().resources.get(&id).copied());
    let Some((core, participant, sid)) = found else {
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such WHIP resource",
            None,
        );
    };
    if sid.to_string() != session {
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such WHIP resource",
            None,
        );
    }
    let (reply, done) = oneshot::channel();
    let _ = sig.cores[usize::from(core)]
        .commands
        .send(Command::Leave { participant, reply })
        .await;
    // The Left event updates the placement; answer once the core has acted.
    let _ = done.await;
    StatusCode::OK.into_response()
}

/// The control plane relays a moderation (mute, allow to speak, remove) with a moderation token.
async fn moderate(
    State(sig): State<Arc<Signaling>>,
    Path((session, participant)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<axum::Json<Moderation>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let bearer = bearer(&headers);
    let claims = match bearer {
        None => return unauthorized(AuthError::Missing),
        Some(t) => match sig.verifier.verify_moderation(t).await {
            Ok(c) => c,
            Err(e) => return unauthorized(e),
        },
    };
    let axum::Json(action) = match body {
        Ok(b) => b,
        Err(e) => {
            return problem(
                e.status(),
                "bad-body",
                "The moderation could not be read",
                Some(e.body_text()),
            );
        }
    };
    let not_found = || {
        problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such participant",
            None,
        )
    };
    let (Ok(session), Ok(participant)) = (
        session.parse::<SessionId>(),
        participant.parse::<ParticipantId>(),
    ) else {
        return not_found();
    };
    if claims.sid != session {
        return problem(
            StatusCode::FORBIDDEN,
            "wrong-session",
            "The token is for another session",
            None,
        );
    }
    let Some((core, key, sid)) = sig.placement().resources.get(&participant).copied() else {
        return not_found();
    };
    if sid != session {
        return not_found();
    }
    let (reply, done) = oneshot::channel();
    let sent = sig.cores[usize::from(core)]
        .commands
        .send(Command::Moderate {
            participant: key,
            action,
            reply,
        })
        .await;
    match (sent, done.await) {
        (Ok(()), Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        (Ok(()), Ok(false)) => not_found(),
        _ => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "core-unavailable",
            "The media core is not running",
            None,
        ),
    }
}

/// The control plane relays a member's music action (moderation token, `sub` = the member).
async fn music(
    State(sig): State<Arc<Signaling>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Result<axum::Json<MusicAction>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let (session, user) = match relayed(&sig, &session, &headers).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let action = match body {
        Ok(axum::Json(a)) => a,
        Err(e) => {
            return problem(
                e.status(),
                "bad-body",
                "The music action could not be read",
                Some(e.body_text()),
            );
        }
    };
    if let Err(e) = action.validate() {
        return problem(StatusCode::BAD_REQUEST, "bad-body", e, None);
    }
    let Some(core) = sig.core_of(session) else {
        return refused(MusicRefusal::NoRoom);
    };
    let (reply, done) = oneshot::channel();
    let cmd = Command::Music {
        session,
        user,
        action,
        reply,
    };
    core_answer(sig.cores[usize::from(core)].commands.send(cmd).await, done).await
}

/// Where a queued track's file came from: `?track=<attachment>&name=<file name>&type=<media type>`.
#[derive(Debug, serde::Deserialize)]
struct TrackQuery {
    track: AttachmentId,
    name: String,
    #[serde(rename = "type", default)]
    content_type: String,
}

/// The control plane hands over an audio file to queue: it is decoded and encoded here, off the
/// media cores, then given to the room's core.
async fn queue_track(
    State(sig): State<Arc<Signaling>>,
    Path(session): Path<String>,
    Query(query): Query<TrackQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The token first: nobody else gets to send the node a file.
    let (session, user) = match relayed(&sig, &session, &headers).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let bytes = match axum::body::to_bytes(body, MAX_TRACK_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad-body",
                "The file could not be read whole",
                Some(format!("at most {MAX_TRACK_BYTES} bytes")),
            );
        }
    };
    if sig.core_of(session).is_none() {
        return refused(MusicRefusal::NoRoom);
    }
    let encoded = {
        let Ok(_permit) = sig.transcodes.acquire().await else {
            return unavailable();
        };
        let ext = extension(&query.content_type);
        match tokio::task::spawn_blocking(move || {
            crate::music::transcode_guarded(bytes.to_vec(), ext)
        })
        .await
        {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad-track",
                    "The file cannot be played",
                    Some(e.to_string()),
                );
            }
            Err(_) => return unavailable(),
        }
    };
    let track = Track {
        info: MusicTrack {
            id: query.track,
            name: query.name.chars().take(255).collect(),
            duration_ms: encoded.duration_ms(),
        },
        audio: Arc::new(encoded),
    };
    // The room may have moved on while the file was decoded (emptied, even).
    let Some(core) = sig.core_of(session) else {
        return refused(MusicRefusal::NoRoom);
    };
    let (reply, done) = oneshot::channel();
    let cmd = Command::QueueTrack {
        session,
        user,
        track,
        reply,
    };
    core_answer(sig.cores[usize::from(core)].commands.send(cmd).await, done).await
}

/// The session and the user of a request the control plane relays with a moderation token.
async fn relayed(
    sig: &Signaling,
    session: &str,
    headers: &HeaderMap,
) -> Result<(SessionId, protocol::UserId), Response> {
    let claims = match bearer(headers) {
        None => return Err(unauthorized(AuthError::Missing)),
        Some(t) => sig
            .verifier
            .verify_moderation(t)
            .await
            .map_err(unauthorized)?,
    };
    let Ok(session) = session.parse::<SessionId>() else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such session",
            None,
        ));
    };
    if claims.sid != session {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "wrong-session",
            "The token is for another session",
            None,
        ));
    }
    Ok((session, claims.sub))
}

/// The core's answer to a music command.
async fn core_answer<E>(
    sent: Result<(), E>,
    done: oneshot::Receiver<Result<MusicState, MusicRefusal>>,
) -> Response {
    match (sent, done.await) {
        (Ok(()), Ok(Ok(state))) => axum::Json(state).into_response(),
        (Ok(()), Ok(Err(e))) => refused(e),
        _ => unavailable(),
    }
}

fn refused(e: MusicRefusal) -> Response {
    let status = match e {
        MusicRefusal::NoRoom => StatusCode::NOT_FOUND,
        MusicRefusal::Player(MusicError::QueueHere) => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    problem(
        status,
        "music-refused",
        "The music action was refused",
        Some(e.to_string()),
    )
}

fn unavailable() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "core-unavailable",
        "The media core is not running",
        None,
    )
}

/// A file extension for the decoder's format probe, from the upload's media type.
fn extension(content_type: &str) -> Option<&'static str> {
    Some(match content_type {
        "audio/mpeg" => "mp3",
        "audio/ogg" | "audio/opus" => "ogg",
        "audio/mp4" | "audio/aac" => "m4a",
        "audio/webm" => "webm",
        "audio/wav" => "wav",
        "audio/flac" => "flac",
        _ => return None,
    })
}

async fn readyz(State(sig): State<Arc<Signaling>>) -> Response {
    if sig.draining.load(Ordering::Relaxed) {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "The node is draining",
            None,
        )
    } else {
        "ok".into_response()
    }
}

async fn metrics(State(sig): State<Arc<Signaling>>) -> Response {
    let loads: Vec<&CoreLoad> = sig.cores.iter().map(|c| &*c.load).collect();
    let body = crate::metrics::render(&loads, sig.draining.load(Ordering::Relaxed));
    let mut res = body.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn unauthorized(e: AuthError) -> Response {
    let mut res = problem(
        StatusCode::UNAUTHORIZED,
        "invalid-token",
        "The join token was refused",
        Some(e.to_string()),
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    res
}

/// An RFC 9457 problem answer.
pub(crate) fn problem(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: Option<String>,
) -> Response {
    let body = Problem::new(status.as_u16(), kind, title, detail);
    let mut res = (status, serde_json::to_string(&body).unwrap_or_default()).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores(n: usize) -> Vec<CoreRef> {
        (0..n)
            .map(|_| CoreRef {
                commands: async_channel::bounded(1).0,
                load: Arc::new(CoreLoad::default()),
            })
            .collect()
    }

    fn session(n: u128) -> SessionId {
        SessionId::from_uuid(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_burst_of_new_rooms_spreads_over_the_cores_and_a_room_stays_on_its_core() {
        let cores = cores(2);
        let mut p = Placement::default();
        // Four members of room 1 arrive before any core has counted them.
        let first = p.place(session(1), &cores);
        for _ in 0..3 {
            assert_eq!(p.place(session(1), &cores), first, "a room never moves");
        }
        let second = p.place(session(2), &cores);
        assert_ne!(second, first, "the next room goes to the emptier core");
        // Room 1 empties: its place is released.
        for _ in 0..4 {
            p.unplace(session(1));
        }
        assert!(!p.sessions.contains_key(&session(1)));
        assert_eq!(p.place(session(3), &cores), first);
    }
}
