//! Signing-key rotation, as a pure function of the stored keys and `now`.
//!
//! Keys are numbered by generation. The key that signs is the newest one whose `activates_at`
//! has passed. A new generation is planned [`PUBLISH_LEAD_MS`] before it is due, so it sits in
//! the JWKS (cached by verifiers for at most 5 minutes) before any token carries its `kid`. A key
//! stays in the JWKS for [`RETAIN_MS`] after its successor took over: longer than any token it
//! signed that others verify can live (access 10 min, join 2 min, plus leeway and cache).
//!
//! Trusted-device tokens live longer but only choose an attempt budget: once their key is gone
//! the device counts as new until its next sign-in. Replicas agree through the database: a
//! generation is a primary key, so two replicas planning the same rotation insert one key.

use protocol::api::Jwks;
use protocol::token::Signer;

/// How long before a new key signs it is published.
pub(crate) const PUBLISH_LEAD_MS: i64 = 10 * 60_000;
/// How long a replaced key stays published.
pub(crate) const RETAIN_MS: i64 = 60 * 60_000;
/// The default time between rotations.
pub(crate) const DEFAULT_PERIOD_MS: i64 = 30 * 24 * 3_600_000;

/// One stored key, opened.
#[derive(Debug, Clone)]
pub(crate) struct KeyEntry {
    pub generation: i64,
    pub activates_at_ms: i64,
    pub signer: Signer,
}

/// The keys of one moment: who signs, and what the JWKS shows.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    pub signer: Signer,
    pub jwks: Jwks,
}

/// The next generation to create, if one is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    pub generation: i64,
    pub activates_at_ms: i64,
}

/// The ring at `now`, or `None` when no key is active yet.
pub(crate) fn ring(keys: &[KeyEntry], now_ms: i64) -> Option<Ring> {
    let mut sorted: Vec<&KeyEntry> = keys.iter().collect();
    sorted.sort_by_key(|k| k.generation);
    let active = sorted.iter().rev().find(|k| k.activates_at_ms <= now_ms)?;
    let published = sorted.iter().enumerate().filter(|(i, _)| {
        // A key whose successor took over more than RETAIN ago is gone.
        let successor = sorted[i + 1..].iter().find(|s| s.activates_at_ms <= now_ms);
        successor.is_none_or(|s| now_ms < s.activates_at_ms + RETAIN_MS)
    });
    Some(Ring {
        signer: active.signer.clone(),
        jwks: Jwks {
            keys: published.map(|(_, k)| k.signer.jwk()).collect(),
        },
    })
}

/// The generation to create at `now`: the first key when there is none, the next one
/// [`PUBLISH_LEAD_MS`] before the active one has signed for `period_ms`. Nothing while a
/// later key is already waiting.
pub(crate) fn plan(keys: &[KeyEntry], now_ms: i64, period_ms: i64) -> Option<Planned> {
    let newest = keys.iter().max_by_key(|k| k.generation);
    let Some(newest) = newest else {
        return Some(Planned {
            generation: 1,
            activates_at_ms: now_ms,
        });
    };
    if newest.activates_at_ms > now_ms {
        return None;
    }
    let due = newest.activates_at_ms.saturating_add(period_ms);
    (now_ms + PUBLISH_LEAD_MS >= due).then(|| Planned {
        generation: newest.generation + 1,
        activates_at_ms: due.max(now_ms + PUBLISH_LEAD_MS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3_600_000;

    fn key(generation: i64, activates_at_ms: i64) -> KeyEntry {
        KeyEntry {
            generation,
            activates_at_ms,
            signer: Signer::from_seed(&[generation as u8; 32]),
        }
    }

    fn kids(ring: &Ring) -> Vec<String> {
        ring.jwks.keys.iter().map(|k| k.kid.clone()).collect()
    }

    #[test]
    fn the_first_key_is_active_at_once() {
        assert_eq!(
            plan(&[], 5, 30 * DAY),
            Some(Planned {
                generation: 1,
                activates_at_ms: 5
            })
        );
        assert!(ring(&[], 5).is_none());
    }

    #[test]
    fn a_new_key_is_published_before_it_signs_and_the_old_one_stays_until_its_tokens_expired() {
        let period = 30 * DAY;
        let mut keys = vec![key(1, 0)];
        let (k1, k2) = (
            keys[0].signer.kid().to_owned(),
            key(2, 0).signer.kid().to_owned(),
        );
        // Not due yet.
        assert_eq!(plan(&keys, period - PUBLISH_LEAD_MS - 1, period), None);
        // Due: planned for exactly the end of the period.
        let planned = plan(&keys, period - PUBLISH_LEAD_MS, period).unwrap();
        assert_eq!(
            planned,
            Planned {
                generation: 2,
                activates_at_ms: period
            }
        );
        keys.push(key(2, planned.activates_at_ms));
        // While it waits: published, not signing, and nothing more is planned.
        let waiting = ring(&keys, period - 1).unwrap();
        assert_eq!(waiting.signer.kid(), k1);
        assert_eq!(kids(&waiting), [k1.clone(), k2.clone()]);
        assert_eq!(plan(&keys, period - 1, period), None);
        // It signs from its time on; the old key is still published for RETAIN.
        let switched = ring(&keys, period).unwrap();
        assert_eq!(switched.signer.kid(), k2);
        assert_eq!(kids(&switched), [k1.clone(), k2.clone()]);
        let late = ring(&keys, period + RETAIN_MS - 1).unwrap();
        assert_eq!(kids(&late), [k1, k2.clone()]);
        let gone = ring(&keys, period + RETAIN_MS).unwrap();
        assert_eq!(kids(&gone), [k2]);
    }

    #[test]
    fn a_rotation_overdue_after_downtime_is_still_published_before_it_signs() {
        let period = 30 * DAY;
        let keys = vec![key(1, 0)];
        let now = 90 * DAY;
        assert_eq!(
            plan(&keys, now, period),
            Some(Planned {
                generation: 2,
                activates_at_ms: now + PUBLISH_LEAD_MS
            })
        );
    }
}
