//! Session events from media nodes into SQL (participants joined, left, muted), alerts from
//! location engines into the groups' logs (near, apart, arrived, left, lost), and the fixes of
//! users who keep a location history into theirs.
//!
//! A node in this process hands its events to [`EventIngest::submit`] (applied in order); nodes in
//! other processes append them to a Redis stream that [`consume_redis`] reads as a consumer group,
//! so each event is applied once however many control planes run — but not necessarily in order
//! across them, which is why `left` and `muted` are upserts that hold whatever arrives first.
//! Applying is idempotent, so a redelivered event changes nothing. An event that cannot be applied
//! is logged and acknowledged: one bad entry never blocks the stream. Entries a consumer read and
//! never acknowledged (it died) are taken over by another after [`RECLAIM_IDLE`] (`XAUTOCLAIM`).

use crate::fanout::Fanout;
use crate::notify::PushQueue;
use crate::store::Store;
use protocol::events::{REDIS_EVENT_FIELD, SessionEvent, redis_stream_key};
use protocol::location::{
    HistoryBatch, HistoryFix, LocationAlert, redis_alert_stream_key, redis_history_stream_key,
};
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where applied events go: SQL, and the group's log events to the realtime fan-out.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub store: Store,
    pub fanout: Fanout,
    /// Woken for logged alerts, so members who are offline get their push soon.
    pub push: Arc<PushQueue>,
}

/// The Redis streams a control plane consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    /// Session events of media nodes.
    Sessions,
    /// Alerts of location engines.
    Alerts,
    /// Fixes of location engines for users' histories.
    History,
}

impl Feed {
    fn key(self, prefix: &str) -> String {
        match self {
            Feed::Sessions => redis_stream_key(prefix),
            Feed::Alerts => redis_alert_stream_key(prefix),
            Feed::History => redis_history_stream_key(prefix),
        }
    }
}

/// The consumer group of every control plane on the session-event stream.
pub const CONSUMER_GROUP: &str = "control-plane";

/// Hands session events of in-process media nodes to the control plane.
#[derive(Debug, Clone)]
pub struct EventIngest {
    tx: mpsc::UnboundedSender<SessionEvent>,
}

impl EventIngest {
    /// Queues an event; it is applied after every event submitted before it.
    pub fn submit(&self, event: SessionEvent) {
        let _ = self.tx.send(event);
    }
}

/// Hands alerts of an in-process location engine to the control plane.
#[derive(Debug, Clone)]
pub struct AlertIngest {
    tx: mpsc::UnboundedSender<LocationAlert>,
}

impl AlertIngest {
    /// Queues alerts; each is logged once (by id) in its group.
    pub fn submit(&self, alerts: Vec<LocationAlert>) {
        for alert in alerts {
            let _ = self.tx.send(alert);
        }
    }
}

/// Hands the fixes an in-process location engine took from users who keep a history.
#[derive(Debug, Clone)]
pub struct HistoryIngest {
    tx: mpsc::UnboundedSender<Vec<HistoryFix>>,
}

impl HistoryIngest {
    /// Queues fixes; those of users who keep a history (now) are stored.
    pub fn submit(&self, fixes: Vec<HistoryFix>) {
        let _ = self.tx.send(fixes);
    }
}

/// Starts the task that stores submitted history fixes. Call within a tokio runtime.
pub(crate) fn spawn_history_ingest(sink: Sink) -> HistoryIngest {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<HistoryFix>>();
    tokio::spawn(async move {
        while let Some(mut fixes) = rx.recv().await {
            // Whatever queued meanwhile goes in the same transaction.
            while let Ok(more) = rx.try_recv() {
                fixes.extend(more);
            }
            apply_history(&sink, &fixes).await;
        }
    });
    HistoryIngest { tx }
}

async fn apply_history(sink: &Sink, fixes: &[HistoryFix]) {
    let now = crate::clock::Now::read().ms;
    match sink.store.store_history(fixes, now).await {
        Ok(stored) => tracing::debug!(stored, offered = fixes.len(), "location history"),
        Err(e) => tracing::warn!(error = %e, fixes = fixes.len(), "location history not stored"),
    }
}

/// Starts the task that logs submitted alerts. Call within a tokio runtime.
pub(crate) fn spawn_alert_ingest(sink: Sink) -> AlertIngest {
    let (tx, mut rx) = mpsc::unbounded_channel::<LocationAlert>();
    tokio::spawn(async move {
        while let Some(alert) = rx.recv().await {
            apply_alert(&sink, &alert).await;
        }
    });
    AlertIngest { tx }
}

async fn apply_alert(sink: &Sink, alert: &LocationAlert) {
    match sink.store.log_location_alert(alert).await {
        Ok(Some(logged)) => {
            sink.push.wake(logged.group);
            sink.fanout.event(logged);
        }
        Ok(None) => tracing::debug!(?alert, "alert already logged, or its group or members gone"),
        Err(e) => tracing::warn!(error = %e, ?alert, "alert not logged"),
    }
}

/// Starts the task that applies submitted events. Call within a tokio runtime.
pub(crate) fn spawn_ingest(sink: Sink) -> EventIngest {
    let (tx, mut rx) = mpsc::unbounded_channel::<SessionEvent>();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            apply(&sink, &event).await;
        }
    });
    EventIngest { tx }
}

async fn apply(sink: &Sink, event: &SessionEvent) {
    match sink.store.apply_session_event(event).await {
        Ok((true, logged)) => {
            if let Some(logged) = logged {
                sink.fanout.event(logged);
            }
        }
        Ok((false, _)) => tracing::debug!(?event, "session event changed nothing"),
        Err(e) => tracing::warn!(error = %e, ?event, "session event not applied"),
    }
}

/// How long an entry may sit delivered but unacknowledged before another consumer takes it over:
/// a control plane that read it and died (or restarted under a new consumer name) would
/// otherwise leave it pending forever. A live consumer acknowledges within milliseconds, and
/// applying twice changes nothing.
pub const RECLAIM_IDLE: Duration = Duration::from_secs(30);

/// Consumes the Redis stream of `feed` until the connection cannot be made at all.
/// Entries left pending for `reclaim_idle` by a consumer that went away are taken over at start
/// and then every `reclaim_idle`.
pub(crate) async fn consume_redis(
    feed: Feed,
    sink: Sink,
    url: String,
    prefix: String,
    reclaim_idle: Duration,
) -> anyhow::Result<()> {
    let client = redis::Client::open(url.as_str())?;
    let mut conn = redis::aio::ConnectionManager::new(client).await?;
    let key = feed.key(&prefix);
    create_group(&mut conn, &key).await?;
    let consumer = format!("cp-{}", uuid::Uuid::new_v4().simple());
    tokio::spawn(async move {
        let opts = StreamReadOptions::default()
            .group(CONSUMER_GROUP, &consumer)
            .count(100)
            .block(reclaim_idle.as_millis().clamp(1, 2000) as usize);
        let mut reclaim_at = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= reclaim_at {
                reclaim(feed, &sink, &mut conn, &key, &consumer, reclaim_idle).await;
                reclaim_at = tokio::time::Instant::now() + reclaim_idle;
            }
            let reply: Result<StreamReadReply, _> =
                redis::AsyncCommands::xread_options(&mut conn, &[&key], &[">"], &opts).await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) if e.code() == Some("NOGROUP") => {
                    // Redis restarted empty: the stream and the group are gone; make them again.
                    let _ = create_group(&mut conn, &key).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?feed, "reading from Redis");
                    // Redis is down: back off, the connection manager reconnects.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for stream in reply.keys {
                apply_and_ack(feed, &sink, &mut conn, &key, stream.ids).await;
            }
        }
    });
    Ok(())
}

/// Takes over the entries other consumers left pending for at least `idle`, applies and
/// acknowledges them (`XAUTOCLAIM`, walking the whole pending list a page at a time).
async fn reclaim(
    feed: Feed,
    sink: &Sink,
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
    consumer: &str,
    idle: Duration,
) {
    let mut start = "0-0".to_string();
    // A bound on pages, so a pathological pending list cannot hold the reader here.
    for _ in 0..100 {
        let reply: Result<StreamAutoClaimReply, _> = redis::AsyncCommands::xautoclaim_options(
            conn,
            key,
            CONSUMER_GROUP,
            consumer,
            idle.as_millis() as u64,
            &start,
            StreamAutoClaimOptions::default().count(100),
        )
        .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                if e.code() != Some("NOGROUP") {
                    tracing::warn!(error = %e, ?feed, "reclaiming pending entries");
                }
                return;
            }
        };
        if !reply.claimed.is_empty() {
            tracing::info!(
                count = reply.claimed.len(),
                ?feed,
                "took over entries another consumer left pending"
            );
        }
        apply_and_ack(feed, sink, conn, key, reply.claimed).await;
        if reply.next_stream_id == "0-0" {
            return;
        }
        start = reply.next_stream_id;
    }
}

/// Applies entries in order and acknowledges each, readable or not.
async fn apply_and_ack(
    feed: Feed,
    sink: &Sink,
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
    entries: Vec<StreamId>,
) {
    for entry in entries {
        let json = entry.get::<String>(REDIS_EVENT_FIELD).unwrap_or_default();
        let applied = match feed {
            Feed::Sessions => serde_json::from_str::<SessionEvent>(&json).map(Inbound::Session),
            Feed::Alerts => serde_json::from_str::<LocationAlert>(&json).map(Inbound::Alert),
            Feed::History => serde_json::from_str::<HistoryBatch>(&json).map(Inbound::History),
        };
        match &applied {
            Ok(Inbound::Session(event)) => apply(sink, event).await,
            Ok(Inbound::Alert(alert)) => apply_alert(sink, alert).await,
            Ok(Inbound::History(batch)) => apply_history(sink, &batch.fixes).await,
            Err(_) => {}
        }
        if let Err(e) = applied {
            tracing::warn!(id = %entry.id, ?feed, error = %e, "unreadable stream entry");
        }
        let acked: Result<i64, _> =
            redis::AsyncCommands::xack(conn, key, CONSUMER_GROUP, &[&entry.id]).await;
        if let Err(e) = acked {
            tracing::warn!(error = %e, ?feed, "acknowledging a stream entry");
        }
    }
}

/// An entry of one of the streams.
enum Inbound {
    Session(SessionEvent),
    Alert(LocationAlert),
    History(HistoryBatch),
}

/// Creates the consumer group (and the stream) unless it exists.
async fn create_group(
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
) -> Result<(), redis::RedisError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(CONSUMER_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}
