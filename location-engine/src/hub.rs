//! The hub: the [`Engine`] plus who is connected, what their tokens grant, and what must be sent
//! to whom. Sans-IO like the engine: the server's task feeds it verified claims, fixes and `now`,
//! and carries out the [`Outbox`] it fills (frames to connections, alerts for the bus).
//!
//! Grants follow the newest token a user presented (by `iat`): a group it no longer names stops
//! being shared at once. Sharing with a group lasts until the earlier of the grant's `until` and
//! the token's expiry; a fresh token extends it, and [`Hub::tick`] ends what was not extended.
//! Every member a grant names sees the group's positions on each of their open streams.
//!
//! A group's places come from the control plane: a grant (or a notice) names the revision of the
//! group's places, and when the hub holds an older one it asks the server to fetch them
//! ([`Outbox::fetch_places`], with the token of a member sharing with the group), then applies
//! what changed ([`Hub::apply_places`]). One fetch per group is under way at a time.

use crate::engine::{Alert, Config, Engine, GroupConfig, Handle, IngestError, Seen, Sharing};
use crate::fix::Fix;
use crate::geo::LatLon;
use crate::places::Shape;
use crate::proximity::Rule;
use protocol::ids::{GroupId, PlaceId, UserId};
use protocol::location::{
    FIX_BURST, Grant, GroupPlaces, HistoryFix, LocationAlert, LocationClaims, MAX_FIXES_PER_SEC,
    MemberPosition, PlaceShape, PlacesChanged, Refusal, Rejected, ServerFrame,
    Sharing as SharingView, WireFix,
};
use std::collections::HashMap;
use std::sync::Arc;

/// The maps read on every flush: foldhash (randomly seeded, as the engine's tables), not SipHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A connection's number, given by the server.
pub type ConnId = u64;

/// A group's positions go out at most this often (ms); moves in between are sent together at
/// the end of the interval. Alerts are never held back.
pub const POSITIONS_INTERVAL_MS: i64 = 1_000;

/// What the hub asks the server to do.
#[derive(Debug, Default)]
pub struct Outbox {
    /// A text frame for each of these connections (one encoding shared by all).
    pub frames: Vec<(Vec<ConnId>, Arc<str>)>,
    /// Alerts for the bus (the control plane logs and pushes them).
    pub alerts: Vec<LocationAlert>,
    /// Accepted fixes of users who keep a history, for the control plane to store.
    pub history: Vec<HistoryFix>,
    /// Groups whose places to fetch from the control plane, each with the user whose location
    /// token to fetch with; the outcome goes to [`Hub::apply_places`] or
    /// [`Hub::places_fetch_failed`].
    pub fetch_places: Vec<(GroupId, UserId)>,
}

/// What the hub knows of a group's places.
#[derive(Debug, Default)]
struct PlacesState {
    /// The revision applied (0: none).
    applied: u64,
    /// The newest revision heard of (a grant, a notice).
    wanted: u64,
    /// A fetch is under way.
    fetching: bool,
    /// The places applied, to tell what a new revision changed.
    current: HashMap<PlaceId, (PlaceShape, u32)>,
}

/// Why fixes were not taken at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FixesError {
    #[error("more than {MAX_FIXES_PER_SEC} fixes a second")]
    TooMany,
    #[error("the location token grants no group")]
    NoGrant,
}

#[derive(Debug)]
struct UserState {
    /// `iat` of the newest token seen.
    iat: u64,
    /// That token says the user keeps a history.
    hist: bool,
    /// The groups that token grants, with the sharing they give.
    grants: Vec<(GroupId, Sharing)>,
    conns: Vec<ConnId>,
    /// Fix budget (token bucket) and when it was last filled, ms.
    budget: f64,
    budget_at: i64,
    /// Where the engine keeps the user: fixes go past its id table.
    handle: Handle,
}

/// The engine and its audience.
#[derive(Debug)]
pub struct Hub {
    engine: Engine,
    users: Map<UserId, UserState>,
    /// Per group: its proximity radius (as last granted) and the connections watching it.
    groups: Map<GroupId, (u32, Vec<ConnId>)>,
    /// When each group's positions last went out (kept for an interval), and whether newer ones
    /// wait; `waiting` lists the groups that do.
    sent: Map<GroupId, (i64, bool)>,
    waiting: Vec<GroupId>,
    /// The earliest time one of `waiting` is due (`i64::MAX` when none): flushes before it
    /// skip the walk.
    next_due: i64,
    conns: HashMap<ConnId, UserId>,
    alerts: Vec<Alert>,
    history: Vec<HistoryFix>,
    changed: Vec<GroupId>,
    places: Map<GroupId, PlacesState>,
    fetches: Vec<(GroupId, UserId)>,
}

impl Hub {
    pub fn new(config: Config) -> Self {
        Self {
            engine: Engine::new(config),
            users: Map::default(),
            groups: Map::default(),
            sent: Map::default(),
            waiting: Vec::new(),
            next_due: i64::MAX,
            conns: HashMap::new(),
            alerts: Vec::new(),
            history: Vec::new(),
            changed: Vec::new(),
            places: Map::default(),
            fetches: Vec::new(),
        }
    }

    /// The engine (for reads).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Applies a verified token: shares with its groups (or, for a token older than one seen
    /// before, keeps the newer grants). Answers the sharing now in force and the groups refused.
    pub fn authorize(
        &mut self,
        claims: &LocationClaims,
        now_ms: i64,
    ) -> (Vec<SharingView>, Vec<Refusal>) {
        let user = claims.sub;
        let state = self.users.entry(user).or_insert_with(|| UserState {
            iat: 0,
            hist: false,
            grants: Vec::new(),
            conns: Vec::new(),
            budget: f64::from(FIX_BURST),
            budget_at: now_ms,
            handle: Handle::default(),
        });
        let mut refused = Vec::new();
        if claims.iat >= state.iat {
            state.iat = claims.iat;
            state.hist = claims.hist;
            let old = std::mem::take(&mut state.grants);
            let exp_ms = ms(claims.exp);
            let mut grants = Vec::with_capacity(claims.groups.len());
            for g in &claims.groups {
                let until_ms = g.until.map_or(exp_ms, |u| ms(u).min(exp_ms));
                let sharing = Sharing {
                    precision: g.precision,
                    until_ms,
                };
                configure(&mut self.engine, &mut self.groups, g);
                match self.engine.share(user, g.grp, sharing, now_ms) {
                    Ok(()) => {
                        grants.push((g.grp, sharing));
                        want_places(&mut self.places, &mut self.fetches, g.grp, g.places, user);
                    }
                    Err(e) => refused.push(Refusal {
                        group: g.grp,
                        reason: e.to_string(),
                    }),
                }
            }
            for (group, _) in &old {
                if !grants.iter().any(|(g, _)| g == group) {
                    self.engine.stop_sharing(user, *group);
                }
            }
            let conns = state.conns.clone();
            state.grants = grants;
            for conn in conns {
                self.subscribe(conn, user, &old);
            }
        }
        (self.sharing_of(user), refused)
    }

    fn sharing_of(&self, user: UserId) -> Vec<SharingView> {
        self.users.get(&user).map_or_else(Vec::new, |s| {
            s.grants
                .iter()
                .map(|(group, sh)| SharingView {
                    group: *group,
                    precision: sh.precision,
                    until_ms: sh.until_ms,
                })
                .collect()
        })
    }

    /// A stream of `user` (whose token was authorized) opened: it watches the user's groups and
    /// is sent their positions now.
    pub fn open(&mut self, conn: ConnId, user: UserId, out: &mut Outbox) {
        let Some(state) = self.users.get_mut(&user) else {
            return;
        };
        state.conns.push(conn);
        self.conns.insert(conn, user);
        self.subscribe(conn, user, &[]);
        let groups: Vec<GroupId> = self.users[&user].grants.iter().map(|(g, _)| *g).collect();
        for group in groups {
            let frame = positions(group, &self.engine.view(group));
            out.frames.push((vec![conn], frame));
        }
    }

    /// Moves `conn` from the groups of `old` to the user's current groups.
    fn subscribe(&mut self, conn: ConnId, user: UserId, old: &[(GroupId, Sharing)]) {
        for (group, _) in old {
            if let Some((_, subs)) = self.groups.get_mut(group) {
                subs.retain(|c| *c != conn);
            }
        }
        for (group, _) in &self.users[&user].grants {
            let subs = &mut self.groups.entry(*group).or_default().1;
            if !subs.contains(&conn) {
                subs.push(conn);
            }
        }
    }

    /// A stream closed. Sharing goes on until it expires (the user may post fixes over HTTP or
    /// reconnect).
    pub fn close(&mut self, conn: ConnId) {
        let Some(user) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(state) = self.users.get_mut(&user) {
            state.conns.retain(|c| *c != conn);
            let groups: Vec<GroupId> = state.grants.iter().map(|(g, _)| *g).collect();
            for group in groups {
                if let Some((_, subs)) = self.groups.get_mut(&group) {
                    subs.retain(|c| *c != conn);
                }
            }
        }
    }

    /// Reads ahead what the fixes of `users` will touch, here and in the engine (see
    /// [`Engine::warm`]): call it before taking the fixes of a batch of commands.
    pub fn warm(&self, users: &[UserId], scratch: &mut Vec<(u32, u32)>) {
        if !self.engine.reads_ahead() {
            return;
        }
        // The hub's own state of each user (the budget is read first), and their handle.
        let users = users.iter().map(|&user| {
            let handle = self.users.get(&user).map_or_else(Handle::default, |s| {
                std::hint::black_box(s.budget);
                s.handle
            });
            (user, handle)
        });
        self.engine.warm(users, scratch);
    }

    /// Takes `user`'s fixes (oldest first). Fixes the engine refuses are answered by index.
    pub fn fixes(
        &mut self,
        user: UserId,
        fixes: &[WireFix],
        now_ms: i64,
    ) -> Result<(u32, Vec<Rejected>), FixesError> {
        let Some(state) = self.users.get_mut(&user) else {
            return Err(FixesError::NoGrant);
        };
        let rate = f64::from(MAX_FIXES_PER_SEC);
        let elapsed_s = (now_ms - state.budget_at).max(0) as f64 / 1000.0;
        state.budget = (state.budget + elapsed_s * rate).min(f64::from(FIX_BURST));
        state.budget_at = now_ms;
        if state.budget < fixes.len() as f64 {
            return Err(FixesError::TooMany);
        }
        state.budget -= fixes.len() as f64;
        let hist = state.hist;
        let mut accepted = 0;
        let mut rejected = Vec::new();
        for (i, w) in fixes.iter().enumerate() {
            let result = LatLon::new(w.lat, w.lon)
                .map_err(|e| IngestError::Refused(e.into()))
                .and_then(|at| {
                    let fix = Fix {
                        at,
                        accuracy_m: w.acc,
                        altitude_m: w.alt,
                        speed_mps: w.speed,
                        heading_deg: w.heading,
                        battery: w.battery,
                        taken_ms: w.t,
                    };
                    self.engine
                        .ingest_with(&mut state.handle, user, &fix, now_ms)
                });
            match result {
                Ok(()) => {
                    accepted += 1;
                    if hist {
                        self.history.push(HistoryFix { user, fix: *w });
                    }
                }
                Err(e) => rejected.push(Rejected {
                    index: i as u32,
                    reason: e.to_string(),
                }),
            }
        }
        Ok((accepted, rejected))
    }

    pub fn pause(&mut self, user: UserId) {
        self.engine.pause(user);
    }

    pub fn resume(&mut self, user: UserId) {
        self.engine.resume(user);
    }

    /// Ends expired sharing and raises `lost`.
    pub fn tick(&mut self, now_ms: i64) {
        self.engine.tick(now_ms);
        for state in self.users.values_mut() {
            state.grants.retain(|(_, s)| s.until_ms > now_ms);
        }
        self.users
            .retain(|_, s| !s.grants.is_empty() || !s.conns.is_empty());
        // Groups nobody watches are forgotten here (their radius is given again with the next
        // token that names them).
        self.groups.retain(|_, (_, subs)| !subs.is_empty());
        // So are the places of groups nobody shares with any more: a token that names the
        // group again fetches them again.
        if !self.places.is_empty() {
            let shared: std::collections::HashSet<GroupId> = self
                .users
                .values()
                .flat_map(|s| s.grants.iter().map(|(g, _)| *g))
                .collect();
            let engine = &mut self.engine;
            self.places.retain(|group, _| {
                let keep = shared.contains(group);
                if !keep {
                    engine.remove_group(*group);
                }
                keep
            });
        }
        self.sent.retain(|_, (at, waiting)| {
            *waiting || now_ms.saturating_sub(*at) < POSITIONS_INTERVAL_MS
        });
    }

    /// The control plane says `notice.group`'s places changed: a group this hub serves fetches
    /// them again, with the token of a member sharing with it.
    pub fn places_changed(&mut self, notice: PlacesChanged) {
        let via = self.users.iter().find_map(|(user, state)| {
            state
                .grants
                .iter()
                .any(|(g, _)| *g == notice.group)
                .then_some(*user)
        });
        if let Some(user) = via {
            want_places(
                &mut self.places,
                &mut self.fetches,
                notice.group,
                notice.rev,
                user,
            );
        }
    }

    /// Applies a group's places as fetched: places gone are removed, new and changed ones set
    /// (a member inside a new place is seeded silently: it announces no arrival). A revision
    /// older than the one applied is ignored. Answers the places the engine refused.
    pub fn apply_places(&mut self, places: &GroupPlaces, via: UserId, now_ms: i64) -> usize {
        let state = self.places.entry(places.group).or_default();
        state.fetching = false;
        if places.rev < state.applied {
            return 0;
        }
        let mut refused = 0;
        let mut current = HashMap::with_capacity(places.places.len());
        for p in &places.places {
            let key = (p.shape.clone(), p.dwell_s);
            if state.current.get(&p.id) != Some(&key) {
                let set = Shape::from_wire(&p.shape).and_then(|shape| {
                    self.engine.set_place(
                        places.group,
                        p.id,
                        &shape,
                        i64::from(p.dwell_s) * 1000,
                        now_ms,
                    )
                });
                if set.is_err() {
                    refused += 1;
                    continue;
                }
            }
            current.insert(p.id, key);
        }
        for id in state.current.keys() {
            if !current.contains_key(id) {
                self.engine.remove_place(places.group, *id);
            }
        }
        state.current = current;
        state.applied = places.rev;
        state.wanted = state.wanted.max(places.rev);
        if state.wanted > state.applied {
            // Changed again while this was fetched.
            state.fetching = true;
            self.fetches.push((places.group, via));
        }
        refused
    }

    /// A fetch of `group`'s places failed: the next grant or notice asks again.
    pub fn places_fetch_failed(&mut self, group: GroupId) {
        if let Some(state) = self.places.get_mut(&group) {
            state.fetching = false;
            state.wanted = state.applied;
        }
    }

    /// Collects what the inputs so far produced: alerts for the group's streams and the bus,
    /// and the positions of every group that moved (at most once per group per
    /// [`POSITIONS_INTERVAL_MS`]; what is held back goes out at a later flush).
    pub fn flush(&mut self, now_ms: i64, out: &mut Outbox) {
        out.history.append(&mut self.history);
        out.fetch_places.append(&mut self.fetches);
        self.engine.take_alerts(&mut self.alerts);
        for alert in self.alerts.drain(..) {
            let wire = wire_alert(&alert);
            if let Some((_, subs)) = self.groups.get(&alert.group)
                && !subs.is_empty()
            {
                out.frames
                    .push((subs.clone(), ServerFrame::Alert(wire).encode().into()));
            }
            out.alerts.push(wire);
        }
        self.engine.take_changed(&mut self.changed);
        for group in self.changed.drain(..) {
            let entry = self.sent.entry(group).or_insert((i64::MIN, false));
            if !entry.1 {
                entry.1 = true;
                self.waiting.push(group);
                self.next_due = self
                    .next_due
                    .min(entry.0.saturating_add(POSITIONS_INTERVAL_MS));
            }
        }
        if now_ms < self.next_due {
            return;
        }
        let (sent, groups, engine) = (&mut self.sent, &self.groups, &self.engine);
        let mut next_due = i64::MAX;
        self.waiting.retain(|group| {
            let Some((at, waiting)) = sent.get_mut(group) else {
                return false;
            };
            let due = at.saturating_add(POSITIONS_INTERVAL_MS);
            if now_ms < due {
                next_due = next_due.min(due);
                return true;
            }
            *waiting = false;
            *at = now_ms;
            if let Some((_, subs)) = groups.get(group)
                && !subs.is_empty()
            {
                out.frames
                    .push((subs.clone(), positions(*group, &engine.view(*group))));
            }
            false
        });
        self.next_due = next_due;
    }
}

/// Notes that `group`'s places are at `rev` and asks for a fetch (with `via`'s token) unless one
/// is under way or the revision is applied.
fn want_places(
    places: &mut Map<GroupId, PlacesState>,
    fetches: &mut Vec<(GroupId, UserId)>,
    group: GroupId,
    rev: u64,
    via: UserId,
) {
    let state = places.entry(group).or_default();
    state.wanted = state.wanted.max(rev);
    if state.wanted > state.applied && !state.fetching {
        state.fetching = true;
        fetches.push((group, via));
    }
}

/// Gives the engine the group's proximity radius when it is new or changed.
fn configure(engine: &mut Engine, groups: &mut Map<GroupId, (u32, Vec<ConnId>)>, g: &Grant) {
    let entry = groups.entry(g.grp).or_insert((u32::MAX, Vec::new()));
    if entry.0 != g.near_m {
        entry.0 = g.near_m;
        engine.configure_group(
            g.grp,
            GroupConfig {
                proximity: (g.near_m > 0).then(|| Rule::new(f64::from(g.near_m))),
                ..GroupConfig::default()
            },
        );
    }
}

fn ms(unix_s: u64) -> i64 {
    i64::try_from(unix_s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn positions(group: GroupId, seen: &[Seen]) -> Arc<str> {
    let members = seen
        .iter()
        .map(|s| MemberPosition {
            user: s.user,
            precision: s.precision,
            lat: s.at.lat(),
            lon: s.at.lon(),
            acc: s.accuracy_m,
            t: s.taken_ms,
            lost: s.lost,
            alt: s.altitude_m,
            speed: s.speed_mps,
            heading: s.heading_deg,
            battery: s.battery,
        })
        .collect();
    ServerFrame::Positions { group, members }.encode().into()
}

/// An engine alert on the wire.
pub fn wire_alert(a: &Alert) -> LocationAlert {
    LocationAlert {
        id: a.id,
        group: a.group,
        at_ms: a.at_ms,
        kind: a.what,
    }
}
