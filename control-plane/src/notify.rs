//! Notifications for members who are not connected: the outbox worker.
//!
//! The group log is the outbox. A notifier reads each group's events after `push_progress`,
//! decides who gets a push ([`plan`]: members other than the sender, not online, whose
//! settings want it, with a browser subscription), and in one transaction moves the progress
//! (compare-and-set: one replica wins) and queues the pushes. A message committed is therefore
//! notified even if this process dies right after, and never twice. The sender half delivers
//! queued pushes with Web Push ([`crate::webpush`]): 2xx done, 404/410 forget the device,
//! 429/5xx/network errors retried with exponential backoff (or `Retry-After`) until the push
//! expires.
//!
//! Woken by each message sent here ([`PushQueue::wake`]), at most one pass per [`COALESCE`];
//! every [`SCAN_INTERVAL`] it also scans all groups, which picks up what another replica left.

use crate::api::Shared;
use crate::clock::Now;
use crate::store::{DueDelivery, NewDelivery, PushTarget};
use crate::webpush::{self, VapidKey};
use protocol::account::MessageNotifications;
use protocol::ids::{GroupId, UserId};
use protocol::location::AlertKind;
use protocol::realtime::{EventData, GroupEvent};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// After a wake-up, how long the worker lets further messages gather before a pass, so a busy
/// group costs one pass per interval rather than one per message.
const COALESCE: Duration = Duration::from_millis(25);
/// How often every group is checked for events not yet notified.
const SCAN_INTERVAL: Duration = Duration::from_secs(10);
/// Events read per group per pass.
const PAGE: i64 = 200;
/// Groups taken from a scan per pass.
const SCAN_LIMIT: i64 = 500;
/// Pushes sent per pass.
const SEND_BATCH: i64 = 64;
/// How long a push waits in the outbox before it is given up.
const PUSH_TTL_SECS: u64 = 24 * 3600;
/// Tries before a push is given up.
const MAX_ATTEMPTS: i64 = 10;
/// How long a claimed push is not retried by anyone else (a sender that dies mid-send).
const LEASE: Duration = Duration::from_secs(60);
/// How long one push request may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest message text put in a push (bytes, cut at a character boundary).
const BODY_PREVIEW: usize = 1000;

/// How pushes are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// The VAPID `sub` claim: a `mailto:` or `https:` contact for push services.
    pub subject: String,
    /// The first retry's delay; each further retry doubles it (capped at an hour).
    pub retry_base: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            subject: "mailto:ops@convoy.invalid".into(),
            retry_base: Duration::from_secs(5),
        }
    }
}

/// Groups with new messages, and the worker's wake-up.
#[derive(Debug, Default)]
pub(crate) struct PushQueue {
    dirty: Mutex<HashSet<GroupId>>,
    wake: Notify,
}

impl PushQueue {
    /// `group` has a new message.
    pub(crate) fn wake(&self, group: GroupId) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group);
        self.wake.notify_one();
    }

    fn take(&self) -> HashSet<GroupId> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The pushes one event causes. `online` holds the members known to be connected: they got
/// the event live. A member whose presence is unknown is pushed (a duplicate beats a miss).
pub(crate) fn plan(
    event: &GroupEvent,
    targets: &[PushTarget],
    names: &HashMap<UserId, String>,
    online: &HashSet<UserId>,
) -> Vec<NewDelivery> {
    let message = match &event.data {
        EventData::Message { message } => message,
        EventData::Location { alert, .. } => {
            return plan_alert(event, alert, targets, names, online);
        }
        _ => return Vec::new(),
    };
    let Some(body) = &message.body else {
        return Vec::new();
    };
    let mut preview = body.as_str();
    if preview.len() > BODY_PREVIEW {
        let mut end = BODY_PREVIEW;
        while !preview.is_char_boundary(end) {
            end -= 1;
        }
        preview = &preview[..end];
    }
    let payload = serde_json::json!({
        "type": "message",
        "group": event.group,
        "seq": event.seq,
        "from": message.sender,
        "from_name": names.get(&message.sender),
        "body": preview,
        "attachments": message.attachments.len(),
    })
    .to_string();
    let lowered = body.to_lowercase();
    targets
        .iter()
        .filter(|t| t.user != message.sender && !online.contains(&t.user))
        .filter(|t| match t.messages {
            MessageNotifications::All => true,
            MessageNotifications::Mentions => {
                mentions(&lowered, &format!("@{}", t.username.to_lowercase()))
            }
            MessageNotifications::None => false,
        })
        .map(|t| NewDelivery {
            device: t.device,
            seq: i64::try_from(event.seq).unwrap_or(i64::MAX),
            payload: payload.clone(),
        })
        .collect()
}

/// The pushes of a location alert: `near` to the members who want proximity alerts, `arrived`
/// and `left` to those other than the member who moved. `apart` and `lost` are not pushed (the
/// log has them).
fn plan_alert(
    event: &GroupEvent,
    alert: &AlertKind,
    targets: &[PushTarget],
    names: &HashMap<UserId, String>,
    online: &HashSet<UserId>,
) -> Vec<NewDelivery> {
    let (kind, subject, other, place) = match *alert {
        AlertKind::Near { a, b } => ("near", a, Some(b), None),
        AlertKind::Arrived { user, place } => ("arrived", user, None, Some(place)),
        AlertKind::Left { user, place } => ("left", user, None, Some(place)),
        AlertKind::Apart { .. } | AlertKind::Lost { .. } => return Vec::new(),
    };
    let payload = serde_json::json!({
        "type": kind,
        "group": event.group,
        "seq": event.seq,
        "user": subject,
        "user_name": names.get(&subject),
        "other": other,
        "other_name": other.and_then(|o| names.get(&o)),
        "place": place,
    })
    .to_string();
    targets
        .iter()
        .filter(|t| t.proximity && !online.contains(&t.user))
        .filter(|t| place.is_none() || t.user != subject)
        .map(|t| NewDelivery {
            device: t.device,
            seq: i64::try_from(event.seq).unwrap_or(i64::MAX),
            payload: payload.clone(),
        })
        .collect()
}

/// Whether `text` names `handle` as a word (not `@annie` for `@ann`).
fn mentions(text: &str, handle: &str) -> bool {
    text.match_indices(handle).any(|(at, _)| {
        let next = text[at + handle.len()..].chars().next();
        !next.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '-')
    })
}

/// Starts the worker; it stops when the control plane is dropped.
pub(crate) fn spawn(state: Weak<Shared>, queue: std::sync::Arc<PushQueue>, vapid: VapidKey) {
    tokio::spawn(async move {
        let mut scan = tokio::time::interval(SCAN_INTERVAL);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let full_scan = tokio::select! {
                () = queue.wake.notified() => false,
                _ = scan.tick() => true,
            };
            if !full_scan {
                tokio::time::sleep(COALESCE).await;
            }
            let Some(state) = state.upgrade() else { return };
            let mut groups = queue.take();
            if full_scan {
                match state.store.push_backlog(SCAN_LIMIT).await {
                    Ok(backlog) => groups.extend(backlog.into_iter().map(|(g, _)| g)),
                    Err(e) => tracing::warn!(error = %e, "notifier cannot scan groups"),
                }
            }
            for group in groups {
                if let Err(e) = queue_group(&state, group).await {
                    tracing::warn!(error = %e, %group, "notifier cannot queue pushes");
                    queue.wake(group);
                }
            }
            if let Err(e) = send_due(&state, &vapid, &queue).await {
                tracing::warn!(error = %e, "notifier cannot send pushes");
            }
        }
    });
}

/// Turns `group`'s events after its progress into queued pushes.
async fn queue_group(state: &Shared, group: GroupId) -> Result<(), sqlx::Error> {
    let targets = state.store.push_targets(group).await?;
    if targets.is_empty() {
        // Nobody in the group can get a push: skip its events without reading them.
        if let Some((from, last)) = state.store.push_position(group).await?
            && last > from
        {
            let now = Now::read();
            let expires = now.plus_secs_ms(PUSH_TTL_SECS);
            state
                .store
                .advance_push(group, from, last, &[], now.ms, expires)
                .await?;
        }
        return Ok(());
    }
    let names: HashMap<UserId, String> = state
        .store
        .members(group)
        .await?
        .into_iter()
        .map(|m| (m.user, m.username))
        .collect();
    loop {
        let from = state.store.push_upto(group).await?;
        let events = state.store.events_after(group, from, PAGE).await?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        let to = i64::try_from(last.seq).unwrap_or(i64::MAX);
        let mut deliveries = Vec::new();
        if events
            .iter()
            .any(|e| matches!(e.data, EventData::Message { .. }))
        {
            let users: Vec<UserId> = targets.iter().map(|t| t.user).collect();
            let online: HashSet<UserId> = match state.presence.online(&users, Now::read().ms).await
            {
                Ok(flags) => users
                    .iter()
                    .zip(flags)
                    .filter(|(_, on)| *on)
                    .map(|(u, _)| *u)
                    .collect(),
                Err(_) => HashSet::new(),
            };
            for event in &events {
                deliveries.extend(plan(event, &targets, &names, &online));
            }
        }
        let now = Now::read();
        let advanced = state
            .store
            .advance_push(
                group,
                from,
                to,
                &deliveries,
                now.ms,
                now.plus_secs_ms(PUSH_TTL_SECS),
            )
            .await?;
        if advanced && !deliveries.is_empty() {
            tracing::debug!(%group, pushes = deliveries.len(), "pushes queued");
        }
        if (events.len() as i64) < PAGE {
            return Ok(());
        }
    }
}

/// Sends the pushes that are due.
async fn send_due(state: &Shared, vapid: &VapidKey, queue: &PushQueue) -> Result<(), sqlx::Error> {
    let now = Now::read();
    let due = state.store.due_deliveries(now.ms, SEND_BATCH).await?;
    let mut earliest_retry: Option<i64> = None;
    for push in &due {
        let lease = now.ms + i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        if !state.store.claim_delivery(push, lease).await? {
            continue;
        }
        match deliver(state, vapid, push).await {
            Outcome::Delivered => state.store.drop_delivery(push.id).await?,
            Outcome::Gone => {
                tracing::info!(device = %push.device, "push subscription gone; device forgotten");
                state.store.drop_device(push.device).await?;
            }
            Outcome::Rejected(why) => {
                tracing::warn!(id = %push.id, why, "push rejected; dropped");
                state.store.drop_delivery(push.id).await?;
            }
            Outcome::Retry(why, after) => {
                let attempts = push.attempts + 1;
                let next = Now::read().ms + retry_delay(state, attempts, after);
                if attempts >= MAX_ATTEMPTS || next > push.expires_at_ms {
                    tracing::warn!(id = %push.id, why, attempts, "push given up");
                    state.store.drop_delivery(push.id).await?;
                } else {
                    state
                        .store
                        .retry_delivery(push.id, attempts, next, &why)
                        .await?;
                    earliest_retry = Some(earliest_retry.map_or(next, |e| e.min(next)));
                }
            }
        }
    }
    if due.len() as i64 == SEND_BATCH {
        queue.wake.notify_one();
    } else if let Some(at) = earliest_retry {
        // Wake for the retry if it comes before the next scan.
        let wait = u64::try_from(at - Now::read().ms).unwrap_or(0);
        if Duration::from_millis(wait) < SCAN_INTERVAL {
            let state_queue = std::sync::Arc::clone(&state.push_queue);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                state_queue.wake.notify_one();
            });
        }
    }
    Ok(())
}

/// The delay before retry `attempts`: the service's `Retry-After` when given, otherwise the
/// base doubled per attempt, capped at an hour.
fn retry_delay(state: &Shared, attempts: i64, retry_after: Option<Duration>) -> i64 {
    let doublings = u32::try_from(attempts.clamp(1, 16) - 1).unwrap_or(0);
    let backoff = state
        .push
        .retry_base
        .saturating_mul(1u32 << doublings)
        .min(Duration::from_secs(3600));
    let delay = retry_after.map_or(backoff, |r| r.min(Duration::from_secs(3600)));
    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
}

enum Outcome {
    Delivered,
    /// The subscription no longer exists (404, 410).
    Gone,
    /// The service will never take this push (other 4xx).
    Rejected(String),
    /// Try again later (429, 5xx, no answer), after the service's `Retry-After` if it said.
    Retry(String, Option<Duration>),
}

async fn deliver(state: &Shared, vapid: &VapidKey, push: &DueDelivery) -> Outcome {
    let (Some(key), Some(auth)) = (
        crate::domain::b64url(&push.p256dh),
        crate::domain::b64url(&push.auth),
    ) else {
        return Outcome::Rejected("the subscription keys are not base64url".into());
    };
    let body = match webpush::encrypt(&key, &auth, push.payload.as_bytes(), &mut rand::rngs::OsRng)
    {
        Ok(body) => body,
        Err(e) => return Outcome::Rejected(e.to_string()),
    };
    let authorization =
        match vapid.authorization(&push.endpoint, &state.push.subject, Now::read().secs()) {
            Ok(a) => a,
            Err(e) => return Outcome::Rejected(e.to_string()),
        };
    let ttl = u64::try_from(push.expires_at_ms - Now::read().ms).unwrap_or(0) / 1000;
    let sent = state
        .http
        .post(&push.endpoint)
        .timeout(SEND_TIMEOUT)
        .header("TTL", ttl.to_string())
        .header("Content-Encoding", "aes128gcm")
        .header("Content-Type", "application/octet-stream")
        .header("Urgency", "normal")
        .header("Authorization", authorization)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(format!("no answer: {e}"), None),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        404 | 410 => Outcome::Gone,
        429 | 500..=599 => Outcome::Retry(format!("status {status}"), retry_after),
        _ => Outcome::Rejected(format!("status {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::MessageView;
    use uuid::Uuid;

    fn user(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    fn target(n: u128, name: &str, messages: MessageNotifications) -> PushTarget {
        PushTarget {
            user: user(n),
            username: name.into(),
            messages,
            proximity: n != 5,
            device: Uuid::from_u128(100 + n),
        }
    }

    fn alert(kind: AlertKind) -> GroupEvent {
        GroupEvent {
            group: GroupId::from_uuid(Uuid::from_u128(50)),
            seq: 9,
            at: String::new(),
            actor: user(1),
            data: EventData::Location {
                alert_id: "0".repeat(32),
                alert: kind,
            },
        }
    }

    #[test]
    fn location_alerts_push_near_and_places_to_those_who_want_them() {
        let targets = [
            target(1, "ann", MessageNotifications::None),
            target(2, "bob", MessageNotifications::None),
            target(3, "cat", MessageNotifications::All),
            target(5, "eve", MessageNotifications::All),
        ];
        let names = HashMap::from([(user(1), "ann".to_string()), (user(2), "bob".to_string())]);
        let online = HashSet::from([user(3)]);
        let devices = |kind| -> Vec<Uuid> {
            plan(&alert(kind), &targets, &names, &online)
                .iter()
                .map(|d| d.device)
                .collect()
        };
        // Near: everyone offline who wants proximity alerts, the pair included; not cat (online)
        // nor eve (proximity alerts off).
        let near = AlertKind::Near {
            a: user(1),
            b: user(2),
        };
        assert_eq!(devices(near), [Uuid::from_u128(101), Uuid::from_u128(102)]);
        let pushed = plan(&alert(near), &targets, &names, &online);
        let body: serde_json::Value = serde_json::from_str(&pushed[0].payload).unwrap();
        assert_eq!(body["type"], "near");
        assert_eq!(
            (body["user_name"].as_str(), body["other_name"].as_str()),
            (Some("ann"), Some("bob"))
        );
        assert_eq!(pushed[0].seq, 9);
        // Arrived: not to the one who arrived.
        let place = protocol::ids::PlaceId::from_uuid(Uuid::from_u128(77));
        assert_eq!(
            devices(AlertKind::Arrived {
                user: user(2),
                place
            }),
            [Uuid::from_u128(101)]
        );
        assert!(
            devices(AlertKind::Apart {
                a: user(1),
                b: user(2)
            })
            .is_empty()
        );
        assert!(
            devices(AlertKind::Lost {
                user: user(1),
                last_fix_ms: 0
            })
            .is_empty()
        );
    }

    fn message(from: UserId, body: Option<&str>) -> GroupEvent {
        let group = GroupId::from_uuid(Uuid::from_u128(50));
        GroupEvent {
            group,
            seq: 7,
            at: String::new(),
            actor: from,
            data: EventData::Message {
                message: MessageView {
                    id: 7,
                    group,
                    sender: from,
                    client_msg_id: "c".into(),
                    body: body.map(str::to_owned),
                    created_at: String::new(),
                    edited_at: None,
                    deleted_at: None,
                    attachments: Vec::new(),
                    status: None,
                },
            },
        }
    }

    #[test]
    fn pushes_go_to_offline_members_whose_settings_want_them() {
        let targets = [
            target(1, "ann", MessageNotifications::All),
            target(2, "bob", MessageNotifications::All),
            target(3, "cat", MessageNotifications::Mentions),
            target(4, "dan", MessageNotifications::Mentions),
            target(5, "eve", MessageNotifications::None),
            target(6, "fay", MessageNotifications::All),
        ];
        let names = HashMap::from([(user(1), "ann".to_owned())]);
        let online = HashSet::from([user(6)]);
        let event = message(user(1), Some("Lunch at the pass? @Cat @danny"));
        let to: Vec<Uuid> = plan(&event, &targets, &names, &online)
            .iter()
            .map(|d| d.device)
            .collect();
        // Not ann (the sender), not dan (@danny is not @dan), not eve (none), not fay (online).
        assert_eq!(to, vec![Uuid::from_u128(102), Uuid::from_u128(103)]);
        let payload: serde_json::Value =
            serde_json::from_str(&plan(&event, &targets, &names, &online)[0].payload).unwrap();
        assert_eq!(payload["from_name"], "ann");
        assert_eq!(payload["seq"], 7);

        assert!(plan(&message(user(1), None), &targets, &names, &online).is_empty());
        let long = "é".repeat(2000);
        let pushes = plan(&message(user(1), Some(&long)), &targets, &names, &online);
        let payload: serde_json::Value = serde_json::from_str(&pushes[0].payload).unwrap();
        assert_eq!(payload["body"].as_str().unwrap().len(), BODY_PREVIEW);
        assert!(pushes[0].payload.len() <= webpush::MAX_PLAINTEXT);
    }

    #[test]
    fn mentions_are_whole_handles() {
        assert!(mentions("hi @ann!", "@ann"));
        assert!(mentions("@ann", "@ann"));
        assert!(!mentions("hi @annie", "@ann"));
        assert!(!mentions("hi @ann.r", "@ann"));
        assert!(mentions("@annie and @ann", "@ann"));
    }
}
