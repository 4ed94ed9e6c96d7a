//! `GET /v1/events`: one WebSocket per client carrying every event of the caller's groups
//! (frames in [`protocol::realtime`]).
//!
//! A connection keeps, per group, the highest `seq` it has sent (its position). An event from
//! the bus is sent when it is the next one; an older one is a duplicate and skipped; a newer
//! one means something was missed, and the connection reads the missing events from SQL
//! first. A full mailbox or a bus resync makes it re-read its groups and everything after its
//! positions. The replay after `hello` is that same sync, so a client that reconnects with its
//! cursor gets exactly what it lacks.
//!
//! A connection also counts its user as online (see [`crate::presence`]): the first connection
//! of a user who shows their presence announces them to their groups, the last one to close
//! announces them offline. Typing notices from the client are recorded with a TTL and passed to
//! the group's connections. 1:1 call signals (offer, answer, candidates, hangup) are relayed to
//! every connection of the callee. All of these are ephemeral: not in the log, not replayed.
//!
//! A connection lives no longer than its access token: it closes with 4001 when the token
//! expires, and at once when the token's sign-in session is signed out (logout, a device
//! revoked, other sessions ended, a stolen refresh token detected), on whichever replica that
//! happened: a [`Item::SignedOut`] on the bus, and, since the bus may drop it, a look at the
//! session on every resync.

use super::AppState;
use super::error::AppError;
use super::messages::advance_markers;
use crate::clock::Now;
use crate::fanout::{Delivery, Item, Subscription};
use crate::presence::HEARTBEAT;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::Response;
use futures_util::SinkExt as _;
use protocol::api::MarkersRequest;
use protocol::ids::{GroupId, UserId};
use protocol::realtime::{
    CLOSE_BAD_FRAME, CLOSE_TOO_SLOW, CLOSE_UNAUTHORIZED, CallSignal, ClientFrame, EventData,
    GroupEvent, HangupReason, MAX_CLIENT_FRAME, ServerFrame,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The socket's read buffer. Clients send small frames (hello, pings, typing, call signals);
/// a bigger frame grows the buffer as it arrives. (tungstenite zeroes the whole buffer before
/// every read, so its 128 KiB default cost a memset of that size per wake-up.)
const READ_BUFFER: usize = 4096;
/// How long a client has to send `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one frame may take to go out before the client counts as not reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The most events replayed per group; beyond that the client gets a gap and reads REST.
pub(crate) const REPLAY_LIMIT: i64 = 1000;
/// Frames taken from the mailbox for one write.
const BATCH: usize = 64;
/// Events read from SQL per query while catching up.
const PAGE: i64 = 200;
/// Typing starts passed on per connection and group, at most one per this interval.
const TYPING_MIN_INTERVAL: Duration = Duration::from_secs(1);

#[utoipa::path(get, path = "/v1/events", tag = "events", summary = "The realtime WebSocket (frames: protocol/src/realtime.rs)", security(()), responses((status = 101, description = "Switching to WebSocket")))]
pub(super) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    // Not a WebSocket handshake: say why as problem+json, like every other error.
    let upgrade = upgrade.map_err(|e| AppError::BadRequest {
        status: e.status(),
        detail: e.body_text(),
    })?;
    // A token in the upgrade request is checked before upgrading, so a bad one is a plain 401.
    let header_token = match headers.get(AUTHORIZATION) {
        Some(_) => Some(super::extract::bearer(&headers)?.to_owned()),
        None => None,
    };
    let pre = match &header_token {
        Some(token) => Some(verify(&state, token).await?),
        None => None,
    };
    Ok(upgrade
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let mut conn = Conn {
                socket,
                state,
                id: Uuid::new_v4(),
                session: None,
                online: None,
                typed: HashMap::new(),
                peers: HashSet::new(),
            };
            if let Err(reason) = conn.run(pre).await {
                tracing::debug!(?reason, "events connection closed");
                conn.close(reason).await;
            }
            conn.offline().await;
        }))
}

/// Who a connection is for.
#[derive(Debug, Clone, Copy)]
struct Holder {
    user: UserId,
    /// The sign-in session of the token; the connection closes when it is signed out.
    session: Option<Uuid>,
    /// When the token expires (Unix seconds).
    expires: u64,
}

async fn verify(state: &AppState, token: &str) -> Result<Holder, AppError> {
    super::extract::authenticate(state, token, Now::read())
        .await
        .map(|claims| Holder {
            user: claims.sub,
            session: claims.sid,
            expires: claims.exp,
        })
}

/// The end of a connection whose sign-in session was signed out.
const SIGNED_OUT: End = End::Close(CLOSE_UNAUTHORIZED, "this session was signed out");

/// Why a connection ends from our side.
#[derive(Debug)]
enum End {
    /// The client went away or the socket failed: nothing to send.
    Gone,
    Close(u16, &'static str),
    Internal,
}

impl From<sqlx::Error> for End {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "events connection cannot read SQL");
        End::Internal
    }
}

struct Conn {
    socket: WebSocket,
    state: AppState,
    /// This connection in the presence store.
    id: Uuid,
    /// The sign-in session of its token (known after hello).
    session: Option<Uuid>,
    /// Once counted in the presence store: whose connection it is and whether they show it.
    online: Option<(UserId, bool)>,
    /// When this connection last passed on a typing start, per group (at most one a second).
    typed: HashMap<GroupId, Instant>,
    /// Users this connection may send call signals to (checked once: they share a group).
    peers: HashSet<UserId>,
}

/// Per group, the highest `seq` sent.
type Positions = BTreeMap<GroupId, u64>;

impl Conn {
    async fn run(&mut self, pre: Option<Holder>) -> Result<(), End> {
        let hello = tokio::time::timeout(HELLO_TIMEOUT, self.socket.recv())
            .await
            .map_err(|_| End::Close(CLOSE_UNAUTHORIZED, "no hello in time"))?;
        let (token, cursor) = match hello {
            Some(Ok(Message::Text(text))) => match ClientFrame::decode(&text) {
                Ok(ClientFrame::Hello {
                    access_token,
                    cursor,
                }) => (access_token, cursor),
                _ => return Err(End::Close(CLOSE_BAD_FRAME, "the first frame must be hello")),
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err(End::Gone),
            Some(Ok(_)) => {
                return Err(End::Close(CLOSE_BAD_FRAME, "the first frame must be hello"));
            }
        };
        let holder = match (pre, token) {
            (_, Some(token)) => verify(&self.state, &token)
                .await
                .map_err(|_| End::Close(CLOSE_UNAUTHORIZED, "invalid access token"))?,
            (Some(pre), None) => pre,
            (None, None) => return Err(End::Close(CLOSE_UNAUTHORIZED, "no access token")),
        };
        let Holder {
            user,
            session,
            expires,
        } = holder;
        self.session = session;
        // Registered before anything is read, so nothing committed from now on is missed.
        let hub = Arc::clone(self.state.fanout.hub());
        let (sub, mut rx) = hub.register(user);
        let mut positions = Positions::new();
        self.sync(&sub, user, &mut positions, Some(cursor)).await?;
        // Counted online before `ready`, so a client that has `ready` is seen online.
        let visible = self.state.store.shows_presence(user).await?;
        self.online = Some((user, visible));
        self.heartbeat(user, visible, &positions).await;
        self.send(&ServerFrame::Ready {
            cursor: positions.clone(),
        })
        .await?;
        self.flush().await?;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();

        let now = Now::read().secs();
        let expiry = tokio::time::sleep(Duration::from_secs(expires.saturating_sub(now)));
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                item = rx.recv() => {
                    let Some(item) = item else { return Err(End::Internal) };
                    self.on_item(&sub, user, &mut positions, &item).await?;
                    // Whatever else has queued goes out in the same write.
                    for _ in 0..BATCH {
                        let Ok(item) = rx.try_recv() else { break };
                        self.on_item(&sub, user, &mut positions, &item).await?;
                    }
                }
                () = sub.mailbox().lagged() => {
                    if sub.mailbox().take_lagged() {
                        self.sync(&sub, user, &mut positions, None).await?;
                    }
                }
                frame = self.socket.recv() => {
                    self.on_frame(user, &positions, frame).await?;
                }
                _ = heartbeat.tick() => {
                    let visible = self.online.is_some_and(|(_, v)| v);
                    self.heartbeat(user, visible, &positions).await;
                }
                () = &mut expiry => {
                    return Err(End::Close(CLOSE_UNAUTHORIZED, "the access token expired"));
                }
                () = self.state.closing.cancelled() => {
                    return Err(End::Close(1001, "the server is shutting down"));
                }
            }
            self.flush().await?;
        }
    }

    /// Brings every group up to date from SQL: groups joined since get replayed from the
    /// join (or from `cursor`), groups left are announced, the rest continue after their
    /// position. With `cursor` (the hello), groups named there that the caller is not in
    /// are announced as removed.
    async fn sync(
        &mut self,
        sub: &Subscription,
        user: UserId,
        positions: &mut Positions,
        cursor: Option<BTreeMap<GroupId, u64>>,
    ) -> Result<(), End> {
        // A resync may stand for a missed sign-out (bus down, mailbox full): ask SQL, not the
        // cache, which may predate it. (The hello's sync comes right after the token check.)
        if cursor.is_none()
            && let Some(session) = self.session
            && super::extract::signed_out_in_sql(&self.state, session, user, Now::read()).await?
        {
            return Err(SIGNED_OUT);
        }
        let groups = self.state.store.groups_of(user).await?;
        let current: BTreeMap<GroupId, (u64, u64)> = groups
            .iter()
            .map(|g| {
                let last = u64::try_from(g.group.last_seq).unwrap_or(0);
                let joined = u64::try_from(g.joined_seq).unwrap_or(1).saturating_sub(1);
                (g.group.id, (joined, last))
            })
            .collect();
        let mut gone: Vec<GroupId> = positions
            .keys()
            .filter(|g| !current.contains_key(g))
            .copied()
            .collect();
        if let Some(cursor) = &cursor {
            gone.extend(cursor.keys().filter(|g| !current.contains_key(g)));
        }
        for group in gone {
            self.removed(sub, positions, group).await?;
        }
        for (&group, &(joined, last)) in &current {
            if let std::collections::btree_map::Entry::Vacant(entry) = positions.entry(group) {
                // A cursor beyond the group's end would skip what comes next.
                let from = cursor
                    .as_ref()
                    .and_then(|c| c.get(&group).copied())
                    .unwrap_or(joined)
                    .min(last);
                sub.join(group);
                entry.insert(from);
            }
            self.catch_up(sub, positions, group, last).await?;
        }
        Ok(())
    }

    /// Sends `group`'s events after its position up to at least `upto` (more if SQL has
    /// them), or a gap when more than [`REPLAY_LIMIT`] are missing.
    async fn catch_up(
        &mut self,
        sub: &Subscription,
        positions: &mut Positions,
        group: GroupId,
        upto: u64,
    ) -> Result<(), End> {
        let Some(&from) = positions.get(&group) else {
            return Ok(());
        };
        if upto.saturating_sub(from) > REPLAY_LIMIT as u64 {
            self.send(&ServerFrame::Gap {
                group,
                from: from + 1,
                seq: upto,
            })
            .await?;
            positions.insert(group, upto);
        }
        loop {
            let Some(&pos) = positions.get(&group) else {
                return Ok(());
            };
            let page = self
                .state
                .store
                .events_after(group, i64::try_from(pos).unwrap_or(i64::MAX), PAGE)
                .await?;
            let full = page.len() as i64 == PAGE;
            for event in &page {
                self.deliver(sub, positions, event).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Sends an event that is its group's next and applies what it means for this caller.
    async fn deliver(
        &mut self,
        sub: &Subscription,
        positions: &mut Positions,
        event: &GroupEvent,
    ) -> Result<(), End> {
        self.deliver_encoded(sub, positions, event, None).await
    }

    /// [`Self::deliver`] with the frame already encoded (shared by every connection).
    async fn deliver_encoded(
        &mut self,
        sub: &Subscription,
        positions: &mut Positions,
        event: &GroupEvent,
        frame: Option<&str>,
    ) -> Result<(), End> {
        match frame {
            Some(text) => self.send_text(text.to_owned()).await?,
            None => self.send(&ServerFrame::Event(event.clone())).await?,
        }
        positions.insert(event.group, event.seq);
        let me = sub.user();
        let gone = match &event.data {
            EventData::MemberLeft { user, .. } => *user == me,
            EventData::GroupDeleted => true,
            _ => false,
        };
        if gone {
            self.removed(sub, positions, event.group).await?;
        }
        Ok(())
    }

    async fn removed(
        &mut self,
        sub: &Subscription,
        positions: &mut Positions,
        group: GroupId,
    ) -> Result<(), End> {
        sub.leave(group);
        positions.remove(&group);
        self.send(&ServerFrame::Removed { group }).await
    }

    async fn on_item(
        &mut self,
        sub: &Subscription,
        user: UserId,
        positions: &mut Positions,
        delivery: &Delivery,
    ) -> Result<(), End> {
        match &delivery.item {
            Item::Event(event) => {
                if let EventData::GroupDeleted = event.data {
                    if positions.contains_key(&event.group) {
                        self.send(&ServerFrame::Event(event.clone())).await?;
                        self.removed(sub, positions, event.group).await?;
                    }
                    return Ok(());
                }
                let Some(&pos) = positions.get(&event.group) else {
                    // Not in the group here yet: a join of ours means a sync picks it up.
                    if matches!(&event.data, EventData::MemberJoined { user: u, .. } if *u == user)
                    {
                        self.sync(sub, user, positions, None).await?;
                    }
                    return Ok(());
                };
                if event.seq <= pos {
                    return Ok(());
                }
                if event.seq == pos + 1 {
                    return self
                        .deliver_encoded(sub, positions, event, delivery.frame())
                        .await;
                }
                self.catch_up(sub, positions, event.group, event.seq).await
            }
            Item::Markers {
                group,
                user,
                read_upto,
                delivered_upto,
            } => {
                if positions.contains_key(group) {
                    self.send(&ServerFrame::Markers {
                        group: *group,
                        user: *user,
                        read_upto: *read_upto,
                        delivered_upto: *delivered_upto,
                    })
                    .await?;
                }
                Ok(())
            }
            Item::Resync => self.sync(sub, user, positions, None).await,
            Item::Typing {
                group, user: who, ..
            } => {
                if *who != user
                    && positions.contains_key(group)
                    && let Some(frame) = delivery.frame()
                {
                    self.send_text(frame.to_owned()).await?;
                }
                Ok(())
            }
            Item::Call {
                from,
                call,
                signal,
                except,
                ..
            } => {
                if *except == Some(self.id) {
                    return Ok(());
                }
                // An offer brings the callee's own ICE servers.
                let ice_servers = matches!(signal, CallSignal::Offer { .. })
                    .then(|| self.state.ice.servers_for(user, Now::read().secs()).0);
                self.send(&ServerFrame::Call {
                    from: *from,
                    call: *call,
                    signal: signal.clone(),
                    ice_servers,
                })
                .await
            }
            Item::Presence { user: who, .. } => {
                if *who != user
                    && let Some(frame) = delivery.frame()
                {
                    self.send_text(frame.to_owned()).await?;
                }
                Ok(())
            }
            Item::SignedOut { .. } => {
                if delivery.item.signs_out(user, self.session) {
                    return Err(SIGNED_OUT);
                }
                Ok(())
            }
        }
    }

    /// Counts (or renews) this connection in the presence store; when that makes the user
    /// online and they show it, tells their groups.
    async fn heartbeat(&mut self, user: UserId, visible: bool, positions: &Positions) {
        let now = Now::read().ms;
        if let Ok(true) = self.state.presence.connected(user, self.id, now).await
            && visible
        {
            self.state.fanout.publish(Item::Presence {
                user,
                online: true,
                groups: positions.keys().copied().collect(),
            });
        }
        self.state.presence.sweep(now);
    }

    /// Takes this connection out of the presence store; when it was the user's last, tells
    /// their groups.
    async fn offline(&mut self) {
        let Some((user, visible)) = self.online.take() else {
            return;
        };
        let now = Now::read().ms;
        if !matches!(
            self.state.presence.disconnected(user, self.id, now).await,
            Ok(true)
        ) || !visible
        {
            return;
        }
        match self.state.store.groups_of(user).await {
            Ok(groups) => self.state.fanout.publish(Item::Presence {
                user,
                online: false,
                groups: groups.iter().map(|g| g.group.id).collect(),
            }),
            Err(e) => tracing::warn!(error = %e, "cannot announce a user going offline"),
        }
    }

    /// A call signal from the client, relayed to every connection of `to` on any replica. An
    /// offer to someone with no live connection is answered with a hangup (`offline`).
    async fn on_call(
        &mut self,
        user: UserId,
        to: UserId,
        call: Uuid,
        signal: CallSignal,
    ) -> Result<(), End> {
        if !self.peers.contains(&to) {
            if to == user || !self.state.store.may_see_profile(user, to).await? {
                return Err(End::Close(
                    CLOSE_BAD_FRAME,
                    "calls go to people in your groups",
                ));
            }
            self.peers.insert(to);
        }
        if matches!(signal, CallSignal::Offer { .. })
            && self.state.presence.online(&[to], Now::read().ms).await == Ok(vec![false])
        {
            return self
                .send(&ServerFrame::Call {
                    from: to,
                    call,
                    signal: CallSignal::Hangup {
                        reason: HangupReason::Offline,
                    },
                    ice_servers: None,
                })
                .await;
        }
        // The sender's other devices stop ringing once one of them answers or hangs up.
        let elsewhere = match &signal {
            CallSignal::Answer { .. } => Some(CallSignal::Hangup {
                reason: HangupReason::AnsweredElsewhere,
            }),
            CallSignal::Hangup { reason } => Some(CallSignal::Hangup { reason: *reason }),
            _ => None,
        };
        self.state.fanout.publish(Item::Call {
            to,
            from: user,
            call,
            signal,
            except: None,
        });
        if let Some(signal) = elsewhere {
            self.state.fanout.publish(Item::Call {
                to: user,
                from: to,
                call,
                signal,
                except: Some(self.id),
            });
        }
        Ok(())
    }

    /// A typing notice from the client: recorded with a TTL and passed to the group (a start
    /// at most once a second per group; a stop only if a start was on).
    async fn on_typing(
        &mut self,
        user: UserId,
        positions: &Positions,
        group: GroupId,
        typing: bool,
    ) -> Result<(), End> {
        if !positions.contains_key(&group) {
            return Err(End::Close(CLOSE_BAD_FRAME, "not a group of yours"));
        }
        let now = Instant::now();
        if typing {
            if self
                .typed
                .get(&group)
                .is_some_and(|at| now.duration_since(*at) < TYPING_MIN_INTERVAL)
            {
                return Ok(());
            }
            self.typed.insert(group, now);
        } else {
            self.typed.remove(&group);
        }
        let changed = self
            .state
            .presence
            .set_typing(group, user, typing, Now::read().ms)
            .await;
        // A start always goes out (it renews the others' timers); a stop when it ends one,
        // or when the store cannot tell.
        if typing || changed != Ok(false) {
            self.state.fanout.publish(Item::Typing {
                group,
                user,
                typing,
            });
        }
        Ok(())
    }

    async fn on_frame(
        &mut self,
        user: UserId,
        positions: &Positions,
        frame: Option<Result<Message, axum::Error>>,
    ) -> Result<(), End> {
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
            Some(Ok(Message::Binary(_))) => {
                return Err(End::Close(CLOSE_BAD_FRAME, "frames are JSON text"));
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(End::Gone),
        };
        match ClientFrame::decode(&text) {
            Ok(ClientFrame::Ping {}) => self.send(&ServerFrame::Pong).await,
            Ok(ClientFrame::Call { to, call, signal }) => {
                self.on_call(user, to, call, signal).await
            }
            Ok(ClientFrame::Typing { group, typing }) => {
                self.on_typing(user, positions, group, typing).await
            }
            Ok(ClientFrame::Markers {
                group,
                read,
                delivered,
            }) => {
                let req = MarkersRequest { read, delivered };
                match advance_markers(&self.state, group, user, req).await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(End::Close(CLOSE_BAD_FRAME, "not a group of yours")),
                    Err(AppError::Internal(_)) => Err(End::Internal),
                    Err(_) => Err(End::Close(CLOSE_BAD_FRAME, "cannot move these markers")),
                }
            }
            Ok(ClientFrame::Hello { .. }) => Err(End::Close(CLOSE_BAD_FRAME, "hello is sent once")),
            Err(_) => Err(End::Close(CLOSE_BAD_FRAME, "not a client frame")),
        }
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send_text(frame.encode()).await
    }

    /// Queues a frame; [`Self::flush`] writes what is queued (one write for many frames).
    async fn send_text(&mut self, text: String) -> Result<(), End> {
        let text = Message::Text(Utf8Bytes::from(text));
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.feed(text)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Close(CLOSE_TOO_SLOW, "the client is not reading")),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Close(CLOSE_TOO_SLOW, "the client is not reading")),
        }
    }

    async fn close(&mut self, end: End) {
        let (code, reason) = match end {
            End::Gone => return,
            End::Close(code, reason) => (code, reason),
            End::Internal => (1011, "internal error"),
        };
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ =
            tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Close(Some(frame)))).await;
    }
}
