//! Session allocation: `POST /v1/groups/{id}/sessions` (DESIGN.md §4).
//!
//! A group has at most one active session of each kind. If it exists and its node is alive
//! (and not shutting down), the caller joins it there (200). Otherwise the stale session is
//! ended and a new one is placed by the [`allocator`](crate::allocator) on a SERVING node (201).
//! Two members asking at once end in one session: the insert is guarded by the store's partial
//! unique index, and the loser of the race fetches the winner's session. A session is end-to-end
//! encrypted or not for its whole life; asking for the other kind while it is active is a 409.

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, Json, Path};
use super::groups::member_of;
use crate::allocator;
use crate::clock::Now;
use crate::store::SessionRow;
use crate::tokens::JoinGrant;
use axum::extract::State;
use axum::http::StatusCode;
use protocol::api::{Candidate, CreateSessionRequest, Role, SessionAllocation, SessionView};
use protocol::ids::{GroupId, SessionId};
use protocol::node::NodeRecord;
use uuid::Uuid;

/// Rounds of fetch / end / insert before giving up (each lost round means another request won
/// a race, so more than a few means something is wrong).
const MAX_ROUNDS: usize = 4;

#[utoipa::path(post, path = "/v1/groups/{id}/sessions", tag = "sessions", summary = "Open a voice session on a media node", request_body = CreateSessionRequest, params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 201, description = "A new session and a join token", body = SessionAllocation), (status = 200, description = "The group's open session of that kind and a join token", body = SessionAllocation)))]
pub(super) async fn allocate(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
    Json(req): Json<CreateSessionRequest>,
) -> Result<(StatusCode, Json<SessionAllocation>), AppError> {
    let membership = member_of(&state, group, caller).await?;
    // Admins moderate the room; they control the music, and so does everyone when the group
    // shares music.
    let admin = membership.role == Role::Admin;
    let music_ctl = admin || membership.group.settings.music_sharing;
    let kind = req.kind;

    for _ in 0..MAX_ROUNDS {
        let now = Now::read();
        if let Some(active) = state.store.active_session(group, kind).await? {
            match state.registry.get(&active.node) {
                Some(node) if allocator::keeps_sessions(&node) => {
                    if active.e2ee != req.e2ee {
                        // Joining the other kind would silently drop (or break) the encryption.
                        return Err(AppError::Conflict(if active.e2ee {
                            "the group's active session is end-to-end encrypted: ask with e2ee"
                        } else {
                            "the group's active session is not end-to-end encrypted: ask without e2ee"
                        }));
                    }
                    let answer =
                        answer(&state, caller, (admin, music_ctl), &active, vec![node], now);
                    return Ok((StatusCode::OK, Json(answer)));
                }
                _ => {
                    tracing::info!(
                        session = %active.id,
                        node = %active.node,
                        "ending a session whose node is gone"
                    );
                    if let Some(event) = state
                        .store
                        .end_session(&active, caller.user, now.ms)
                        .await?
                    {
                        state.fanout.event(event);
                    }
                }
            }
        }

        let candidates = {
            let alive = state.registry.alive();
            let mut rng = rand::thread_rng();
            allocator::choose(&alive, state.region_hint.as_deref(), &mut rng)
        };
        let Some(chosen) = candidates.first() else {
            return Err(AppError::NoMediaNode);
        };
        let session = SessionRow {
            id: SessionId::from_uuid(Uuid::now_v7()),
            group,
            kind,
            node: chosen.id.clone(),
            created_at_ms: now.ms,
            e2ee: req.e2ee,
        };
        if let Some(event) = state
            .store
            .insert_active_session(&session, caller.user)
            .await?
        {
            state.fanout.event(event);
            tracing::info!(session = %session.id, node = %session.node, "session created");
            let answer = answer(
                &state,
                caller,
                (admin, music_ctl),
                &session,
                candidates,
                now,
            );
            return Ok((StatusCode::CREATED, Json(answer)));
        }
        // Another request created the group's session meanwhile: go round and join it.
    }
    Err(AppError::internal("session allocation kept losing races"))
}

/// The answer: the session, its candidates in order and a join token for the first.
fn answer(
    state: &AppState,
    caller: Caller,
    (admin, music_ctl): (bool, bool),
    session: &SessionRow,
    candidates: Vec<NodeRecord>,
    now: Now,
) -> SessionAllocation {
    let join_token = state.tokens.join(
        JoinGrant {
            user: caller.user,
            node: session.node.clone(),
            session: session.id,
            group: session.group,
            kind: session.kind,
            music_ctl,
            admin,
            e2ee: session.e2ee,
        },
        now.secs(),
    );
    SessionAllocation {
        session: SessionView {
            id: session.id,
            group_id: session.group,
            kind: session.kind,
            node_id: session.node.clone(),
            e2ee: session.e2ee,
        },
        candidates: candidates
            .into_iter()
            .map(|node| Candidate {
                whip_url: node.whip_url(session.id),
                node_id: node.id,
                region: node.region,
            })
            .collect(),
        join_token,
    }
}
