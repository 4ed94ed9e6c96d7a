//! Fan-out of group events to the `/v1/events` connections of this replica and, through Redis
//! pub/sub, of every other replica.
//!
//! SQL stays the truth: a connection delivers an event straight from the bus only when it is
//! the next `seq` of its group; on a jump, a full mailbox, or a [`Item::Resync`] it reads what
//! it lacks from SQL. So the bus may drop, duplicate or reorder and nothing is lost: when
//! Redis is down each replica fans out locally, and when it comes back the replica that could
//! not publish asks every replica to resync, and every subscriber resyncs its own connections
//! on (re)subscribing.

use protocol::ids::{GroupId, UserId};
use protocol::realtime::{
    CallSignal, EventData, GroupEvent, PresenceStatus, ServerFrame, TYPING_TTL_MS,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

/// The Redis channel every replica publishes to and subscribes on.
pub const REDIS_CHANNEL: &str = "convoy:fanout";
/// Frames a connection's mailbox holds before it falls back to reading SQL.
const MAILBOX: usize = 512;
/// Wait before reconnecting a lost Redis subscription.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What travels on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Item {
    /// A durable event, after its transaction committed.
    Event(GroupEvent),
    /// A member's markers moved.
    Markers {
        group: GroupId,
        user: UserId,
        read_upto: u64,
        delivered_upto: u64,
    },
    /// Something may have been missed: every connection reads SQL.
    Resync,
    /// A member started or stopped typing (ephemeral: dropped, never resynced, when a
    /// connection's mailbox is full).
    Typing {
        group: GroupId,
        user: UserId,
        typing: bool,
    },
    /// A 1:1 call signal for every connection of `to` but `except` (ephemeral).
    Call {
        to: UserId,
        from: UserId,
        call: Uuid,
        signal: CallSignal,
        /// The connection that sent it, when it goes to the sender's own other devices.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<Uuid>,
    },
    /// A user came online or went offline; goes to the connections of the groups named
    /// (ephemeral, like typing).
    Presence {
        user: UserId,
        online: bool,
        groups: Vec<GroupId>,
    },
    /// Sign-in sessions of `user` ended: `session` alone, or (without it) every one but
    /// `keep`. Their connections close. Never dropped: a full mailbox flags a resync, and a
    /// resync checks the connection's session again.
    SignedOut {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep: Option<Uuid>,
    },
}

impl Item {
    /// Whether a [`Item::SignedOut`] ends the connection of `user` in sign-in session `sid`.
    pub(crate) fn signs_out(&self, user: UserId, sid: Option<Uuid>) -> bool {
        match self {
            Item::SignedOut {
                user: who,
                session: Some(session),
                ..
            } => *who == user && sid == Some(*session),
            Item::SignedOut {
                user: who,
                session: None,
                keep,
            } => *who == user && (keep.is_none() || sid != *keep),
            _ => false,
        }
    }
}

/// An item as handed to connections: an event is encoded as a frame once, by the first
/// connection that sends it, however many connections send it.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub item: Item,
    frame: OnceLock<String>,
}

impl Delivery {
    /// The frame of an event, a typing notice or a presence change, encoded once for every
    /// connection that sends it.
    pub(crate) fn frame(&self) -> Option<&str> {
        if let Some(text) = self.frame.get() {
            return Some(text);
        }
        let frame = match &self.item {
            Item::Event(event) => ServerFrame::Event(event.clone()),
            Item::Typing {
                group,
                user,
                typing,
            } => ServerFrame::Typing {
                group: *group,
                user: *user,
                typing: *typing,
                expires_in_ms: if *typing { TYPING_TTL_MS } else { 0 },
            },
            Item::Presence { user, online, .. } => ServerFrame::Presence {
                user: *user,
                status: if *online {
                    PresenceStatus::Online
                } else {
                    PresenceStatus::Offline
                },
            },
            Item::Markers { .. } | Item::Resync | Item::Call { .. } | Item::SignedOut { .. } => {
                return None;
            }
        };
        Some(self.frame.get_or_init(|| frame.encode()))
    }
}

/// A connection's inbox: bounded; when full the connection is told to resync instead.
#[derive(Debug)]
pub(crate) struct Mailbox {
    tx: mpsc::Sender<Arc<Delivery>>,
    lagged: AtomicBool,
    wake: Notify,
}

impl Mailbox {
    fn deliver(&self, item: &Arc<Delivery>) {
        if self.tx.try_send(Arc::clone(item)).is_err() {
            self.flag_lagged();
        }
    }

    /// Delivers an ephemeral item if there is room; a full mailbox just misses it.
    fn offer(&self, item: &Arc<Delivery>) {
        let _ = self.tx.try_send(Arc::clone(item));
    }

    fn flag_lagged(&self) {
        self.lagged.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether the connection must read SQL (and clears the flag).
    pub(crate) fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }

    /// Resolves when the connection has been flagged lagged.
    pub(crate) async fn lagged(&self) {
        self.wake.notified().await;
    }
}

#[derive(Debug, Default)]
struct Routes {
    by_group: HashMap<GroupId, HashMap<u64, Arc<Mailbox>>>,
    by_user: HashMap<UserId, HashMap<u64, Arc<Mailbox>>>,
}

/// This replica's connections, by group and by user.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    routes: Mutex<Routes>,
    next: AtomicU64,
}

/// A registered connection; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    user: UserId,
    mailbox: Arc<Mailbox>,
}

impl Hub {
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection of `user` (in no group yet) and answers its inbox.
    pub(crate) fn register(
        self: &Arc<Self>,
        user: UserId,
    ) -> (Subscription, mpsc::Receiver<Arc<Delivery>>) {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let mailbox = Arc::new(Mailbox {
            tx,
            lagged: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.routes()
            .by_user
            .entry(user)
            .or_default()
            .insert(id, Arc::clone(&mailbox));
        let sub = Subscription {
            hub: Arc::clone(self),
            id,
            user,
            mailbox,
        };
        (sub, rx)
    }

    /// Hands an item to the connections it concerns.
    pub(crate) fn dispatch(&self, item: Item) {
        let item = Arc::new(Delivery {
            item,
            frame: OnceLock::new(),
        });
        let routes = self.routes();
        match &item.item {
            Item::Event(event) => {
                let members = routes.by_group.get(&event.group);
                for mailbox in members.into_iter().flat_map(HashMap::values) {
                    mailbox.deliver(&item);
                }
                // A new member's connections are not subscribed to the group yet.
                if let EventData::MemberJoined { user, .. } = &event.data {
                    for (id, mailbox) in routes.by_user.get(user).into_iter().flatten() {
                        if members.is_none_or(|m| !m.contains_key(id)) {
                            mailbox.deliver(&item);
                        }
                    }
                }
            }
            Item::Markers { group, .. } => {
                for mailbox in routes
                    .by_group
                    .get(group)
                    .into_iter()
                    .flat_map(HashMap::values)
                {
                    mailbox.deliver(&item);
                }
            }
            Item::Resync => {
                for mailbox in routes.by_user.values().flat_map(HashMap::values) {
                    mailbox.flag_lagged();
                }
            }
            Item::Typing { group, .. } => {
                for mailbox in routes
                    .by_group
                    .get(group)
                    .into_iter()
                    .flat_map(HashMap::values)
                {
                    mailbox.offer(&item);
                }
            }
            Item::Call { to, .. } => {
                for mailbox in routes.by_user.get(to).into_iter().flat_map(HashMap::values) {
                    mailbox.offer(&item);
                }
            }
            Item::SignedOut { user, .. } => {
                for mailbox in routes
                    .by_user
                    .get(user)
                    .into_iter()
                    .flat_map(HashMap::values)
                {
                    mailbox.deliver(&item);
                }
            }
            Item::Presence { groups, .. } => {
                // Once per connection, however many of the groups it shares.
                let mut seen = std::collections::HashSet::new();
                for (id, mailbox) in groups
                    .iter()
                    .filter_map(|g| routes.by_group.get(g))
                    .flatten()
                {
                    if seen.insert(*id) {
                        mailbox.offer(&item);
                    }
                }
            }
        }
    }

    /// How many connections are registered.
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        self.routes().by_user.values().map(HashMap::len).sum()
    }
}

impl Subscription {
    pub(crate) fn user(&self) -> UserId {
        self.user
    }

    pub(crate) fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Starts routing `group`'s items to this connection.
    pub(crate) fn join(&self, group: GroupId) {
        self.hub
            .routes()
            .by_group
            .entry(group)
            .or_default()
            .insert(self.id, Arc::clone(&self.mailbox));
    }

    /// Stops routing `group`'s items to this connection.
    pub(crate) fn leave(&self, group: GroupId) {
        let mut routes = self.hub.routes();
        if let Some(members) = routes.by_group.get_mut(&group) {
            members.remove(&self.id);
            if members.is_empty() {
                routes.by_group.remove(&group);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut routes = self.hub.routes();
        routes.by_group.retain(|_, members| {
            members.remove(&self.id);
            !members.is_empty()
        });
        if let Some(conns) = routes.by_user.get_mut(&self.user) {
            conns.remove(&self.id);
            if conns.is_empty() {
                routes.by_user.remove(&self.user);
            }
        }
    }
}

/// What crosses Redis: an item and the replica that published it.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: Uuid,
    item: Item,
}

/// Publishes items here and, with Redis, to the other replicas.
#[derive(Debug, Clone)]
pub(crate) struct Fanout {
    hub: Arc<Hub>,
    out: Option<mpsc::UnboundedSender<Item>>,
    /// With Redis: whether the subscription is up.
    subscribed: Arc<AtomicBool>,
}

impl Fanout {
    /// Fan-out within this replica only.
    pub(crate) fn local() -> Self {
        Self {
            hub: Arc::new(Hub::default()),
            out: None,
            subscribed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Fan-out across replicas through Redis at `url`; starts the publisher and subscriber
    /// tasks. Call within a tokio runtime.
    pub(crate) fn redis(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let hub = Arc::new(Hub::default());
        let origin = Uuid::new_v4();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_loop(client.clone(), origin, rx));
        let subscribed = Arc::new(AtomicBool::new(false));
        tokio::spawn(subscribe_loop(
            client,
            origin,
            Arc::downgrade(&hub),
            Arc::clone(&subscribed),
        ));
        Ok(Self {
            hub,
            out: Some(tx),
            subscribed,
        })
    }

    /// `None` without Redis; with it, whether other replicas' events are arriving.
    pub(crate) fn redis_ok(&self) -> Option<bool> {
        self.out
            .as_ref()
            .map(|_| self.subscribed.load(Ordering::Acquire))
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Delivers to this replica's connections at once and queues for the others.
    pub(crate) fn publish(&self, item: Item) {
        if let Some(out) = &self.out {
            let _ = out.send(item.clone());
        }
        self.hub.dispatch(item);
    }

    /// Publishes a committed event.
    pub(crate) fn event(&self, event: GroupEvent) {
        self.publish(Item::Event(event));
    }
}

/// Reads a message from the Redis channel: the replica it came from and the item.
pub(crate) fn decode(payload: &[u8]) -> Result<(Uuid, Item), serde_json::Error> {
    let envelope: Envelope = serde_json::from_slice(payload)?;
    Ok((envelope.origin, envelope.item))
}

async fn publish_loop(client: redis::Client, origin: Uuid, mut rx: mpsc::UnboundedReceiver<Item>) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    // Set when an item could not be published: the next success first asks for a resync.
    let mut missed = false;
    while let Some(item) = rx.recv().await {
        let mut payloads = Vec::with_capacity(2);
        if missed {
            payloads.push(Item::Resync);
        }
        payloads.push(item);
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        let Some(c) = conn.as_mut() else {
            missed = true;
            continue;
        };
        let mut ok = true;
        for item in payloads {
            let text = match serde_json::to_string(&Envelope { origin, item }) {
                Ok(text) => text,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a fan-out item");
                    continue;
                }
            };
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(REDIS_CHANNEL)
                .arg(text)
                .query_async(c)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "fan-out publish failed; local only until Redis is back");
                ok = false;
                conn = None;
                break;
            }
        }
        missed = !ok;
    }
}

async fn subscribe_loop(
    client: redis::Client,
    origin: Uuid,
    hub: std::sync::Weak<Hub>,
    subscribed: Arc<AtomicBool>,
) {
    use futures_util::StreamExt as _;
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if let Err(e) = pubsub.subscribe(REDIS_CHANNEL).await {
                    tracing::warn!(error = %e, "fan-out subscribe failed");
                } else {
                    subscribed.store(true, Ordering::Release);
                    // Whatever was published while we were not listening is in SQL.
                    if let Some(hub) = hub.upgrade() {
                        hub.dispatch(Item::Resync);
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Some(hub) = hub.upgrade() else {
                            return;
                        };
                        match decode(message.get_payload_bytes()) {
                            Ok((from, _)) if from == origin => {}
                            Ok((_, item)) => hub.dispatch(item),
                            Err(e) => tracing::warn!(error = %e, "undecodable fan-out message"),
                        }
                    }
                    subscribed.store(false, Ordering::Release);
                    tracing::warn!("fan-out subscription lost; local only until Redis is back");
                }
            }
            Err(e) => tracing::debug!(error = %e, "fan-out cannot reach Redis"),
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::Role;

    fn event(group: GroupId, seq: u64, data: EventData) -> Item {
        Item::Event(GroupEvent {
            group,
            seq,
            at: String::new(),
            actor: UserId::from_uuid(Uuid::from_u128(99)),
            data,
        })
    }

    #[test]
    fn items_reach_the_group_and_a_new_members_connections_only() {
        let hub = Arc::new(Hub::default());
        let g = GroupId::from_uuid(Uuid::from_u128(1));
        let ann = UserId::from_uuid(Uuid::from_u128(2));
        let bob = UserId::from_uuid(Uuid::from_u128(3));
        let (a, mut a_rx) = hub.register(ann);
        a.join(g);
        let (_b, mut b_rx) = hub.register(bob);
        hub.dispatch(event(g, 1, EventData::MessageDeleted { message_id: 1 }));
        assert!(a_rx.try_recv().is_ok());
        assert!(b_rx.try_recv().is_err(), "bob is not in the group");
        let joined = EventData::MemberJoined {
            user: bob,
            role: Role::Member,
        };
        hub.dispatch(event(g, 2, joined));
        assert!(a_rx.try_recv().is_ok());
        assert!(b_rx.try_recv().is_ok(), "bob's connection learns he joined");
        drop(a);
        assert_eq!(hub.connections(), 1);
        assert!(hub.routes().by_group.is_empty());
    }

    #[test]
    fn presence_reaches_each_connection_once_and_ephemeral_items_never_flag_a_lag() {
        let hub = Arc::new(Hub::default());
        let (g1, g2, g3) = (
            GroupId::from_uuid(Uuid::from_u128(1)),
            GroupId::from_uuid(Uuid::from_u128(2)),
            GroupId::from_uuid(Uuid::from_u128(3)),
        );
        let ann = UserId::from_uuid(Uuid::from_u128(4));
        let (a, mut a_rx) = hub.register(UserId::from_uuid(Uuid::from_u128(5)));
        a.join(g1);
        a.join(g2);
        let (c, mut c_rx) = hub.register(UserId::from_uuid(Uuid::from_u128(6)));
        c.join(g3);
        hub.dispatch(Item::Presence {
            user: ann,
            online: true,
            groups: vec![g1, g2],
        });
        let got = a_rx.try_recv().unwrap();
        assert_eq!(
            got.frame().unwrap(),
            ServerFrame::Presence {
                user: ann,
                status: PresenceStatus::Online
            }
            .encode()
        );
        assert!(a_rx.try_recv().is_err(), "one frame for two shared groups");
        assert!(c_rx.try_recv().is_err(), "c shares no group with ann");
        for _ in 0..=MAILBOX {
            hub.dispatch(Item::Typing {
                group: g1,
                user: ann,
                typing: true,
            });
        }
        assert!(
            !a.mailbox().take_lagged(),
            "a missed typing notice needs no resync"
        );
    }

    #[test]
    fn call_signals_reach_every_connection_of_the_callee_and_cross_the_bus_intact() {
        let hub = Arc::new(Hub::default());
        let (ann, bob) = (
            UserId::from_uuid(Uuid::from_u128(1)),
            UserId::from_uuid(Uuid::from_u128(2)),
        );
        let (_p, mut phone) = hub.register(bob);
        let (_l, mut laptop) = hub.register(bob);
        let (_a, mut a_rx) = hub.register(ann);
        let item = Item::Call {
            to: bob,
            from: ann,
            call: Uuid::from_u128(3),
            signal: CallSignal::Hangup {
                reason: protocol::realtime::HangupReason::Busy,
            },
            except: None,
        };
        hub.dispatch(item.clone());
        assert_eq!(phone.try_recv().unwrap().item, item);
        assert_eq!(laptop.try_recv().unwrap().item, item);
        assert!(a_rx.try_recv().is_err());
        let origin = Uuid::from_u128(9);
        let text = serde_json::to_string(&Envelope {
            origin,
            item: item.clone(),
        })
        .unwrap();
        assert_eq!(decode(text.as_bytes()).unwrap(), (origin, item));
        let seed = include_bytes!("../../fuzz/corpus/realtime_frames/seed-bus_call");
        assert!(decode(seed).is_ok(), "the fuzz seed is a real bus message");
    }

    #[test]
    fn sign_outs_reach_the_users_connections_name_the_right_sessions_and_cross_the_bus() {
        let hub = Arc::new(Hub::default());
        let (ann, bob) = (
            UserId::from_uuid(Uuid::from_u128(1)),
            UserId::from_uuid(Uuid::from_u128(2)),
        );
        let (phone, laptop) = (Uuid::from_u128(3), Uuid::from_u128(4));
        let one = Item::SignedOut {
            user: ann,
            session: Some(phone),
            keep: None,
        };
        assert!(one.signs_out(ann, Some(phone)));
        assert!(!one.signs_out(ann, Some(laptop)), "another session of ann");
        assert!(!one.signs_out(ann, None), "a token of no session");
        assert!(!one.signs_out(bob, Some(phone)), "another user");
        let others = Item::SignedOut {
            user: ann,
            session: None,
            keep: Some(laptop),
        };
        assert!(others.signs_out(ann, Some(phone)));
        assert!(others.signs_out(ann, None));
        assert!(!others.signs_out(ann, Some(laptop)), "the one kept");
        assert!(!others.signs_out(bob, Some(phone)));
        let all = Item::SignedOut {
            user: ann,
            session: None,
            keep: None,
        };
        assert!(all.signs_out(ann, Some(laptop)));
        assert!(!Item::Resync.signs_out(ann, Some(phone)));

        let (a, mut a_rx) = hub.register(ann);
        let (_b, mut b_rx) = hub.register(bob);
        hub.dispatch(one.clone());
        assert_eq!(a_rx.try_recv().unwrap().item, one);
        assert!(b_rx.try_recv().is_err());
        // Never dropped: with the mailbox full, the connection is told to resync.
        for _ in 0..=MAILBOX {
            hub.dispatch(others.clone());
        }
        assert!(a.mailbox().take_lagged());
        let origin = Uuid::from_u128(9);
        let text = serde_json::to_string(&Envelope {
            origin,
            item: others.clone(),
        })
        .unwrap();
        assert_eq!(decode(text.as_bytes()).unwrap(), (origin, others));
        let seed = include_bytes!("../../fuzz/corpus/realtime_frames/seed-bus_signed_out");
        assert!(decode(seed).is_ok(), "the fuzz seed is a real bus message");
    }

    #[test]
    fn a_full_mailbox_flags_the_connection_instead_of_blocking() {
        let hub = Arc::new(Hub::default());
        let g = GroupId::from_uuid(Uuid::from_u128(1));
        let (a, mut rx) = hub.register(UserId::from_uuid(Uuid::from_u128(2)));
        a.join(g);
        for seq in 0..=MAILBOX as u64 {
            hub.dispatch(event(g, seq, EventData::GroupDeleted));
        }
        assert!(a.mailbox().take_lagged());
        assert!(!a.mailbox().take_lagged(), "taking clears the flag");
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, MAILBOX);
        hub.dispatch(Item::Resync);
        assert!(a.mailbox().take_lagged());
    }
}
