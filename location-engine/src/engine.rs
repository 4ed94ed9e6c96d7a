//! The engine: who shares with which group and how, the latest fix of each, and the alerts that
//! follow from them: proximity between members, arrivals at and departures from places, and
//! members lost to silence. Sans-IO: every call takes `now` (Unix ms, the server's clock), and
//! alerts and changed groups are polled by the shell that owns the sockets.
//!
//! Layout, for the hot path (one fix): a user is a 32-byte slot (the packed fix, the head of its
//! list of memberships, flags) found through a [`Handle`] or an id table of 4-byte entries; each
//! group keeps its members' positions *as the group may see them* (exact, or the approximate
//! cell) side by side in 12-byte spots, the rest of each member in a 24-byte record apart, a
//! triangle of 24-byte pair tracks with one byte a pair that settles the common reading without
//! loading the track ([`Pairs`], which keeps a member's bytes in one run), and its places'
//! centres and reaches in 24-byte records. A fix updates the slot, then for each group it is
//! shared with scans that group's other members (proximity) and its places. No global index of
//! users is kept: every question a member may ask ("who is near", "who is at home") is about
//! their own groups, whose scan is cheaper than moving a point in an R-tree (see
//! ARCHITECTURE.md and the `location` bench).

use crate::fix::{Fix, MAX_CLOCK_AHEAD_MS, Packed, Refused};
use crate::geo::{APPROX_CELL_HALF_DIAGONAL_M, LatLon, MeridianScreen, Probe, approx_cell};
use crate::places::{Place, PlaceError, Places, Shape};
use crate::proximity::{Debounce, Pairs, Proximity, Rule, Track, combined_accuracy};
use hashbrown::HashTable;
use protocol::ids::{GroupId, PlaceId, UserId};
use std::collections::HashMap;
use std::hash::BuildHasher;

/// Members a group may have (its pair triangle grows with the square of this).
pub const MAX_GROUP_MEMBERS: usize = 256;

const NONE: u32 = u32::MAX;

/// A group's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupConfig {
    /// Proximity alerts between members, or none.
    pub proximity: Option<Rule>,
    /// After this long without a fix a member is lost (ms).
    pub lost_after_ms: i64,
}

impl Default for GroupConfig {
    /// Proximity at 200 m, lost after 10 minutes of silence.
    fn default() -> Self {
        Self {
            proximity: Some(Rule::new(200.0)),
            lost_after_ms: 10 * 60_000,
        }
    }
}

/// How precisely a member shares their position with a group: exactly, or only the ~1.1 km
/// cell ([`approx_cell`]), whose centre the group sees and on which alerts are computed.
pub use protocol::location::Precision;

/// A user's choice of sharing with one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharing {
    pub precision: Precision,
    /// Sharing ends at this time (Unix ms); `i64::MAX` for until stopped.
    pub until_ms: i64,
}

/// Something the members of a group are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    /// Unique across restarts: the engine's incarnation in the high half, a sequence below.
    pub id: u128,
    pub group: GroupId,
    pub at_ms: i64,
    pub what: What,
}

/// What an alert says (the wire type itself). Pairs are named once, the smaller id first;
/// `Lost` carries when the last fix was taken.
pub use protocol::location::AlertKind as What;

/// Why a fix was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the user shares their location with no group")]
    NotSharing,
    #[error("the user has paused sharing")]
    Paused,
}

/// Why sharing was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("the group has {MAX_GROUP_MEMBERS} members sharing already")]
    GroupFull,
    #[error("the sharing has already ended")]
    Expired,
}

/// One member as the rest of the group may see them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub user: UserId,
    pub precision: Precision,
    /// The fix, or the centre of its cell.
    pub at: LatLon,
    /// The fix's accuracy, or the cell's half diagonal.
    pub accuracy_m: f64,
    pub taken_ms: i64,
    /// No fix for the group's `lost_after_ms`.
    pub lost: bool,
    /// These four only at exact precision.
    pub altitude_m: Option<f64>,
    pub speed_mps: Option<f64>,
    pub heading_deg: Option<f64>,
    pub battery: Option<u8>,
}

/// What the engine holds, and the bytes it takes (capacities, not lengths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    pub users: usize,
    /// User slots, ids and the id table.
    pub user_bytes: usize,
    pub memberships: usize,
    /// Membership links and the groups' member records.
    pub membership_bytes: usize,
    pub pairs: usize,
    pub pair_bytes: usize,
    pub groups: usize,
    pub places: usize,
}

/// Where the engine last found a user: a way past the id table for a caller that keeps one per
/// user (the hub does), as str0m and quinn-proto hand out handles. A handle names its user, the
/// slot and the slot's generation: it holds while the slot has not been freed since (freeing
/// bumps the generation), which is checked on the slot's own cache line, so a fix through a
/// handle never reads the id table. A handle used for another user, or stale, costs only the
/// lookup it would have saved and is refreshed. [`Handle::default`] is the unknown handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    user: UserId,
    slot: u32,
    generation: u16,
}

impl Handle {
    /// The slot the user was found in, if any (slots are reused once freed).
    pub fn slot(&self) -> Option<u32> {
        (self.slot != NONE).then_some(self.slot)
    }
}

impl Default for Handle {
    fn default() -> Self {
        Handle {
            user: UserId(uuid::Uuid::nil()),
            slot: NONE,
            generation: 0,
        }
    }
}

/// A user: 32 bytes, aligned so that none straddles two cache lines.
#[derive(Debug, Clone, Copy)]
#[repr(align(32))]
struct User {
    fix: Packed,
    /// Head of the list of memberships in `Engine::links`.
    first: u32,
    /// Bumped each time the slot is freed (see [`Handle`]); a slot whose count is spent is
    /// never used again.
    generation: u16,
    flags: u8,
}

const HAS_FIX: u8 = 1;
const PAUSED: u8 = 2;

#[derive(Debug, Clone, Copy)]
struct Link {
    group: u32,
    member: u16,
    next: u32,
}

/// Where a member is as their group sees them (exact, or the centre of their cell): 12 bytes,
/// a group's side by side, five to a cache line. A fix reads every other member's spot; most
/// are settled apart and far, and nothing else of them is read (see `read_group`).
#[derive(Debug, Clone, Copy, Default)]
struct Spot {
    lat_e7: i32,
    lon_e7: i32,
    accuracy_dm: u16,
}

impl Spot {
    fn at(&self) -> LatLon {
        LatLon::from_e7(self.lat_e7, self.lon_e7)
    }

    fn accuracy_m(&self) -> f64 {
        f64::from(self.accuracy_dm) / 10.0
    }
}

/// The rest of a member (24 bytes): read for the member whose fix it is, and for the others only
/// when the reading of their pair from the two spots may change it ([`Pairs::may_change`]).
/// The places each is tracked against are in [`Group::tracked`].
#[derive(Debug, Clone, Copy)]
struct Member {
    taken_ms: i64,
    until_ms: i64,
    /// The user's slot; `NONE` when this member slot is free.
    user: u32,
    flags: u8,
}

const M_APPROX: u8 = 1;
const M_FIX: u8 = 2;
const M_LOST: u8 = 4;
/// The member's places were read once (after that, an untracked place means outside).
const M_SEEDED: u8 = 8;
/// The member's list in [`Group::tracked`] is not empty (most are: a fix of theirs need not
/// read it).
const M_TRACKS: u8 = 16;

impl Member {
    const FREE: Member = Member {
        user: NONE,
        flags: 0,
        taken_ms: 0,
        until_ms: 0,
    };

    /// Has a fix that counts at `now_ms`.
    fn fresh(&self, now_ms: i64, lost_after_ms: i64) -> bool {
        self.user != NONE
            && self.flags & (M_FIX | M_LOST) == M_FIX
            && now_ms - self.taken_ms <= lost_after_ms
    }
}

/// A group. In declaration order (`repr(C)`): what every fix reads first, so that it spans as
/// few cache lines as it can (all of which [`Engine::warm`] reads ahead), then the rest.
#[derive(Debug)]
#[repr(C)]
struct Group {
    spots: Vec<Spot>,
    members: Vec<Member>,
    /// The tracks of members' pairs.
    pairs: Pairs,
    config: GroupConfig,
    /// Per member: the places they are inside of, or being read against (the rest: outside).
    tracked: Vec<Vec<(u32, Track)>>,
    dirty: bool,
    places: Places,
    id: GroupId,
    free: Vec<u16>,
    live: usize,
    place_ids: Vec<PlaceId>,
    place_slots: HashMap<PlaceId, u32>,
}

/// The bytes of a group that every fix reads, from its start (`repr(C)`): the fields before
/// `places`, and the places.
const GROUP_HOT_BYTES: usize = std::mem::offset_of!(Group, places) + size_of::<Places>();

/// Users (slots, live or free) from which [`Engine::warm`] reads ahead: tens of megabytes of
/// state, past a last-level cache (the benches: a loss at 10k users, a gain from 100k).
pub const WARM_ABOVE_USERS: usize = 50_000;

/// Settings of the engine itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Chosen by the shell at start (random): the high half of every alert id.
    pub incarnation: u64,
    /// Seeds the id table's hash.
    pub seed: u64,
}

/// Where alerts and changed groups are collected during one call.
struct Out<'a> {
    alerts: &'a mut Vec<Alert>,
    seq: &'a mut u64,
    incarnation: u64,
    ids: &'a [UserId],
}

impl Out<'_> {
    fn alert(&mut self, group: GroupId, at_ms: i64, what: What) {
        *self.seq += 1;
        self.alerts.push(Alert {
            id: (u128::from(self.incarnation) << 64) | u128::from(*self.seq),
            group,
            at_ms,
            what,
        });
    }

    fn pair(&self, a: u32, b: u32) -> (UserId, UserId) {
        let (a, b) = (self.ids[a as usize], self.ids[b as usize]);
        if a < b { (a, b) } else { (b, a) }
    }
}

/// The location engine.
#[derive(Debug)]
pub struct Engine {
    incarnation: u64,
    seq: u64,
    hasher: foldhash::fast::FixedState,
    users: Vec<User>,
    ids: Vec<UserId>,
    free_users: Vec<u32>,
    index: HashTable<u32>,
    links: Vec<Link>,
    free_links: Vec<u32>,
    groups: Vec<Option<Group>>,
    free_groups: Vec<u32>,
    group_index: HashMap<GroupId, u32>,
    alerts: Vec<Alert>,
    dirty: Vec<u32>,
}

impl Engine {
    pub fn new(config: Config) -> Self {
        Self {
            incarnation: config.incarnation,
            seq: 0,
            hasher: foldhash::fast::FixedState::with_seed(config.seed),
            users: Vec::new(),
            ids: Vec::new(),
            free_users: Vec::new(),
            index: HashTable::new(),
            links: Vec::new(),
            free_links: Vec::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            group_index: HashMap::new(),
            alerts: Vec::new(),
            dirty: Vec::new(),
        }
    }

    fn user_slot(&self, user: UserId) -> Option<u32> {
        let hash = self.hasher.hash_one(user);
        self.index
            .find(hash, |&slot| self.ids[slot as usize] == user)
            .copied()
    }

    /// `user`'s slot, through `handle` when it still holds (then without hashing), else the id
    /// table (then `handle` is refreshed).
    #[inline]
    fn resolve(&self, user: UserId, handle: &mut Handle) -> Option<u32> {
        if handle.user == user
            && let Some(slot) = self.users.get(handle.slot as usize)
            && slot.generation == handle.generation
            && slot.first != NONE
        {
            debug_assert_eq!(self.ids[handle.slot as usize], user);
            return Some(handle.slot);
        }
        let slot = self.user_slot(user)?;
        *handle = Handle {
            user,
            slot,
            generation: self.users[slot as usize].generation,
        };
        Some(slot)
    }

    /// A handle on `user` (unknown if they share with no group).
    pub fn handle(&self, user: UserId) -> Handle {
        let mut handle = Handle::default();
        self.resolve(user, &mut handle);
        handle
    }

    fn group_slot(&self, group: GroupId) -> Option<u32> {
        self.group_index.get(&group).copied()
    }

    fn group_or_insert(&mut self, group: GroupId) -> u32 {
        if let Some(slot) = self.group_slot(group) {
            return slot;
        }
        let state = Group {
            id: group,
            config: GroupConfig::default(),
            spots: Vec::new(),
            members: Vec::new(),
            tracked: Vec::new(),
            free: Vec::new(),
            live: 0,
            pairs: Pairs::default(),
            places: Places::default(),
            place_ids: Vec::new(),
            place_slots: HashMap::new(),
            dirty: false,
        };
        let slot = crate::put(&mut self.groups, &mut self.free_groups, Some(state));
        self.group_index.insert(group, slot);
        slot
    }

    fn group_mut(&mut self, slot: u32) -> &mut Group {
        self.groups[slot as usize]
            .as_mut()
            .expect("a linked group is live")
    }

    /// Sets a group's settings (creating it if new). Pair states are kept: they are read again
    /// under the new rule at the next fixes, through the usual hysteresis and dwell.
    pub fn configure_group(&mut self, group: GroupId, config: GroupConfig) {
        let slot = self.group_or_insert(group);
        self.group_mut(slot).config = config;
    }

    /// Forgets a group: its places, and every member's sharing with it.
    pub fn remove_group(&mut self, group: GroupId) {
        let Some(slot) = self.group_slot(group) else {
            return;
        };
        let members: Vec<(u32, u16)> = self
            .group_mut(slot)
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.user != NONE)
            .map(|(i, m)| (m.user, i as u16))
            .collect();
        for (user, member) in members {
            self.remove_membership(user, slot, member);
        }
        self.groups[slot as usize] = None;
        self.free_groups.push(slot);
        self.group_index.remove(&group);
    }

    /// Starts (or changes) `user`'s sharing with `group`, creating either if new.
    pub fn share(
        &mut self,
        user: UserId,
        group: GroupId,
        sharing: Sharing,
        now_ms: i64,
    ) -> Result<(), ShareError> {
        if sharing.until_ms <= now_ms {
            return Err(ShareError::Expired);
        }
        let g = self.group_or_insert(group);
        let u = match self.user_slot(user) {
            Some(u) => u,
            None => {
                let state = User {
                    fix: Packed::default(),
                    first: NONE,
                    generation: 0,
                    flags: 0,
                };
                let u = match self.free_users.pop() {
                    Some(u) => {
                        // The generation it was freed with.
                        self.users[u as usize].fix = Packed::default();
                        self.users[u as usize].flags = 0;
                        self.ids[u as usize] = user;
                        u
                    }
                    None => {
                        if self.users.len() == self.users.capacity() {
                            // Grow by an eighth, not double: the table is most of the memory.
                            let more = (self.users.len() / 8).max(1024);
                            self.users.reserve_exact(more);
                            self.ids.reserve_exact(more);
                        }
                        self.users.push(state);
                        self.ids.push(user);
                        (self.users.len() - 1) as u32
                    }
                };
                let hash = self.hasher.hash_one(user);
                let (ids, hasher) = (&self.ids, &self.hasher);
                self.index
                    .insert_unique(hash, u, |&s| hasher.hash_one(ids[s as usize]));
                u
            }
        };
        let approx = sharing.precision == Precision::Approx;
        let held = self.users[u as usize];
        let existing = self.member_of(u, g);
        let group = self.groups[g as usize].as_mut().expect("just found");
        let i = match existing {
            Some(i) => i as usize,
            None => {
                if group.live >= MAX_GROUP_MEMBERS {
                    if held.first == NONE {
                        self.forget_slot(u);
                    }
                    return Err(ShareError::GroupFull);
                }
                let i = match group.free.pop() {
                    Some(i) => i as usize,
                    None => {
                        group.members.push(Member::FREE);
                        group.spots.push(Spot::default());
                        group.tracked.push(Vec::new());
                        let n = group.members.len();
                        group.pairs.resize_for(n);
                        n - 1
                    }
                };
                group.live += 1;
                group.members[i].user = u;
                let link = Link {
                    group: g,
                    member: i as u16,
                    next: held.first,
                };
                let l = crate::put(&mut self.links, &mut self.free_links, link);
                self.users[u as usize].first = l;
                i
            }
        };
        let group = self.groups[g as usize].as_mut().expect("just found");
        let member = &mut group.members[i];
        member.until_ms = sharing.until_ms;
        let was_approx = member.flags & M_APPROX != 0;
        if approx != was_approx || existing.is_none() {
            member.flags = if approx { M_APPROX } else { 0 };
            group.tracked[i].clear();
            if held.flags & HAS_FIX != 0 {
                place_member(member, &mut group.spots[i], &held.fix);
            }
            mark(group, g, &mut self.dirty);
        }
        Ok(())
    }

    /// The member index of user slot `u` in group slot `g`.
    fn member_of(&self, u: u32, g: u32) -> Option<u16> {
        let mut l = self.users[u as usize].first;
        while l != NONE {
            let link = self.links[l as usize];
            if link.group == g {
                return Some(link.member);
            }
            l = link.next;
        }
        None
    }

    /// Ends `user`'s sharing with `group`: the group stops seeing them at once. A user who shares
    /// with no group any more is forgotten, fix and all.
    pub fn stop_sharing(&mut self, user: UserId, group: GroupId) {
        let (Some(u), Some(g)) = (self.user_slot(user), self.group_slot(group)) else {
            return;
        };
        if let Some(i) = self.member_of(u, g) {
            self.remove_membership(u, g, i);
        }
    }

    /// Forgets `user` entirely (every sharing, the fix).
    pub fn forget(&mut self, user: UserId) {
        let Some(u) = self.user_slot(user) else {
            return;
        };
        while self.users[u as usize].first != NONE {
            let link = self.links[self.users[u as usize].first as usize];
            self.remove_membership(u, link.group, link.member);
        }
    }

    fn remove_membership(&mut self, u: u32, g: u32, i: u16) {
        let group = self.groups[g as usize].as_mut().expect("linked");
        let idx = i as usize;
        group.members[idx] = Member::FREE;
        group.spots[idx] = Spot::default();
        group.tracked[idx] = Vec::new();
        group.pairs.reset_member(idx, group.members.len());
        group.free.push(i);
        group.live -= 1;
        mark(group, g, &mut self.dirty);
        // Unlink.
        let mut prev = NONE;
        let mut l = self.users[u as usize].first;
        while l != NONE {
            let link = self.links[l as usize];
            if link.group == g {
                if prev == NONE {
                    self.users[u as usize].first = link.next;
                } else {
                    self.links[prev as usize].next = link.next;
                }
                self.free_links.push(l);
                break;
            }
            prev = l;
            l = link.next;
        }
        if self.users[u as usize].first == NONE {
            self.forget_slot(u);
        }
    }

    /// Frees a user slot that has no memberships left: its fix goes with it.
    fn forget_slot(&mut self, u: u32) {
        let id = self.ids[u as usize];
        let hash = self.hasher.hash_one(id);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == u) {
            entry.remove();
        }
        let slot = &mut self.users[u as usize];
        *slot = User {
            fix: Packed::default(),
            first: NONE,
            generation: slot.generation.wrapping_add(1),
            flags: 0,
        };
        // Handles of its past users tell a slot's users apart by generation: one that has had
        // them all is retired (32 bytes, after 65,535 users).
        if slot.generation != u16::MAX {
            self.free_users.push(u);
        }
    }

    /// Pauses `user`'s sharing with every group: their position is dropped and hidden, and fixes
    /// are refused until [`Engine::resume`]. Alerts about them stop; their states are kept.
    pub fn pause(&mut self, user: UserId) {
        let Some(u) = self.user_slot(user) else {
            return;
        };
        let state = &mut self.users[u as usize];
        state.flags = PAUSED;
        state.fix = Packed::default();
        let mut l = state.first;
        while l != NONE {
            let link = self.links[l as usize];
            l = link.next;
            let group = self.groups[link.group as usize].as_mut().expect("linked");
            interrupt(group, link.member as usize);
            let member = &mut group.members[link.member as usize];
            member.flags &= M_APPROX | M_SEEDED | M_TRACKS;
            group.spots[link.member as usize] = Spot::default();
            mark(group, link.group, &mut self.dirty);
        }
    }

    /// Ends a pause: the next fix is taken again.
    pub fn resume(&mut self, user: UserId) {
        if let Some(u) = self.user_slot(user) {
            self.users[u as usize].flags &= !PAUSED;
        }
    }

    /// Whether [`warm`](Self::warm) does anything: from [`WARM_ABOVE_USERS`] users on.
    pub fn reads_ahead(&self) -> bool {
        self.ids.len() >= WARM_ABOVE_USERS
    }

    /// Reads ahead, stage by stage across `users`, what ingesting their next fixes will load:
    /// the user's slot (through the handle, else the id table), every membership link, each
    /// group's hot fields, then its spots, the user's own record, the bytes that settle their
    /// pairs and the places' reaches. At a million users each of those is a cache miss; done
    /// one fix after another they come one at a time. Here each stage asks for the lines of a
    /// whole batch with prefetch instructions, which retire without waiting for their line (a
    /// plain load that misses holds up everything after it, so only the few loads that fit in
    /// the core's window would overlap), and reads only what the next stage needs an address
    /// from (the slot's first link, the links, the group's pointers), by then on its way or
    /// there. Changes nothing (`&self`): the caller ingests as before. `location/fix_warmed` in
    /// `benches/` measures what it buys (README, "Performance"); at 10k users everything is in
    /// cache and the reading ahead is only work (467 → 621 ns when it was measured with loads),
    /// so below [`WARM_ABOVE_USERS`] it does nothing.
    pub fn warm(
        &self,
        users: impl IntoIterator<Item = (UserId, Handle)>,
        scratch: &mut Vec<(u32, u32)>,
    ) {
        if !self.reads_ahead() {
            return;
        }
        scratch.clear();
        // Through the handle where there is one (a stale one only warms the wrong lines).
        scratch.extend(users.into_iter().map(|(user, handle)| {
            let slot = if handle.user == user && (handle.slot as usize) < self.users.len() {
                handle.slot
            } else {
                self.user_slot(user).unwrap_or(NONE)
            };
            (slot, 0)
        }));
        for &(s, _) in scratch.iter() {
            if let Some(slot) = self.users.get(s as usize) {
                prefetch_lines(std::slice::from_ref(slot));
            }
        }
        for (s, _) in scratch.iter_mut() {
            if let Some(slot) = self.users.get(*s as usize) {
                *s = slot.first;
                if let Some(link) = self.links.get(slot.first as usize) {
                    prefetch_lines(std::slice::from_ref(link));
                }
            }
        }
        // Every membership of each user (a fix reads every group it is shared with).
        let users = scratch.len();
        for k in 0..users {
            let mut l = scratch[k].0;
            while let Some(link) = self.links.get(l as usize) {
                scratch.push((link.group, u32::from(link.member)));
                if let Some(group) = self.groups.get(link.group as usize) {
                    // The group's hot fields (`repr(C)`, first), what the next stage reads its
                    // pointers from.
                    prefetch_range(std::ptr::from_ref(group).cast(), GROUP_HOT_BYTES);
                }
                l = link.next;
                if scratch.len() - users > 64 * users {
                    break; // reading ahead is a hint: bounded whatever the chains
                }
            }
        }
        scratch.drain(..users);
        // The group: its spots, the user's own record, the bytes that settle their pairs, its
        // places' reaches: leaves, asked for without waiting for them.
        for &(g, m) in scratch.iter() {
            if let Some(group) = self.groups.get(g as usize).and_then(Option::as_ref) {
                let n = group.spots.len();
                prefetch_lines(&group.spots);
                prefetch_lines(group.pairs.row(m as usize, n));
                if let Some(member) = group.members.get(m as usize) {
                    prefetch_lines(std::slice::from_ref(member));
                }
                if let Some(scan) = group.places.scan() {
                    prefetch_lines(scan);
                }
            }
        }
    }

    /// Takes `fix` as `user`'s latest if it is valid and newer than the one held, and reads
    /// every group the user shares with against it.
    pub fn ingest(&mut self, user: UserId, fix: &Fix, now_ms: i64) -> Result<(), IngestError> {
        self.ingest_with(&mut Handle::default(), user, fix, now_ms)
    }

    /// As [`Engine::ingest`], finding the user through `handle` (kept by the caller, refreshed
    /// here when it no longer holds).
    pub fn ingest_with(
        &mut self,
        handle: &mut Handle,
        user: UserId,
        fix: &Fix,
        now_ms: i64,
    ) -> Result<(), IngestError> {
        let u = self.resolve(user, handle).ok_or(IngestError::NotSharing)?;
        let packed = Packed::pack(fix)?;
        if fix.taken_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
            return Err(Refused::FromTheFuture.into());
        }
        let state = self.users[u as usize];
        if state.flags & PAUSED != 0 {
            return Err(IngestError::Paused);
        }
        if state.flags & HAS_FIX != 0 && state.fix.taken_ms >= packed.taken_ms {
            return Err(Refused::NotNewer.into());
        }
        // Sharing that has ended ends now, before the fix is seen by anyone.
        let mut l = state.first;
        while l != NONE {
            let link = self.links[l as usize];
            l = link.next;
            let until = self.group_mut(link.group).members[link.member as usize].until_ms;
            if until <= now_ms {
                self.remove_membership(u, link.group, link.member);
            }
        }
        let state = &mut self.users[u as usize];
        if state.first == NONE {
            return Err(IngestError::NotSharing);
        }
        state.fix = packed;
        state.flags |= HAS_FIX;
        let mut out = Out {
            alerts: &mut self.alerts,
            seq: &mut self.seq,
            incarnation: self.incarnation,
            ids: &self.ids,
        };
        let mut l = state.first;
        while l != NONE {
            let link = self.links[l as usize];
            l = link.next;
            let group = self.groups[link.group as usize].as_mut().expect("linked");
            let i = link.member as usize;
            place_member(&mut group.members[i], &mut group.spots[i], &packed);
            mark(group, link.group, &mut self.dirty);
            read_group(group, i, now_ms, &mut out);
        }
        Ok(())
    }

    /// Ends sharing that has run out, and marks members lost after their group's silence. Call
    /// it every second or so.
    pub fn tick(&mut self, now_ms: i64) {
        let mut ended = Vec::new();
        for g in 0..self.groups.len() {
            let Some(group) = self.groups[g].as_mut() else {
                continue;
            };
            let lost_after = group.config.lost_after_ms;
            for i in 0..group.members.len() {
                let member = &group.members[i];
                if member.user == NONE {
                    continue;
                }
                if member.until_ms <= now_ms {
                    ended.push((member.user, g as u32, i as u16));
                } else if member.flags & (M_FIX | M_LOST) == M_FIX
                    && now_ms - member.taken_ms > lost_after
                {
                    let (user, last) = (member.user, member.taken_ms);
                    group.members[i].flags |= M_LOST;
                    interrupt(group, i);
                    mark(group, g as u32, &mut self.dirty);
                    let mut out = Out {
                        alerts: &mut self.alerts,
                        seq: &mut self.seq,
                        incarnation: self.incarnation,
                        ids: &self.ids,
                    };
                    let id = group.id;
                    out.alert(
                        id,
                        now_ms,
                        What::Lost {
                            user: self.ids[user as usize],
                            last_fix_ms: last,
                        },
                    );
                }
            }
        }
        for (u, g, i) in ended {
            self.remove_membership(u, g, i);
        }
    }

    /// Adds or replaces a place of `group` (creating the group if new). Members inside it now
    /// are seeded silently: a new place announces no arrivals.
    pub fn set_place(
        &mut self,
        group: GroupId,
        place: PlaceId,
        shape: &Shape,
        dwell_ms: i64,
        now_ms: i64,
    ) -> Result<(), PlaceError> {
        let compiled = Place::new(shape, dwell_ms)?;
        let g = self.group_or_insert(group);
        let group = self.group_mut(g);
        if let Some(&old) = group.place_slots.get(&place) {
            drop_place(group, old);
        }
        let slot = group.places.insert(compiled)?;
        if group.place_ids.len() <= slot as usize {
            group.place_ids.resize(slot as usize + 1, place);
        }
        group.place_ids[slot as usize] = place;
        group.place_slots.insert(place, slot);
        let lost_after = group.config.lost_after_ms;
        let place = group.places.get(slot).expect("just inserted");
        let members = group.members.iter_mut().zip(&group.spots);
        for ((member, spot), tracked) in members.zip(&mut group.tracked) {
            if member.fresh(now_ms, lost_after) && member.flags & M_SEEDED != 0 {
                let mut track = Track::default();
                match place.read(spot.at(), spot.accuracy_m()) {
                    Some(false) => continue,
                    Some(true) => track.seed(true, now_ms),
                    None => {}
                }
                tracked.push((slot, track));
                member.flags |= M_TRACKS;
            }
        }
        Ok(())
    }

    /// Removes a place of `group`; answers whether it was there.
    pub fn remove_place(&mut self, group: GroupId, place: PlaceId) -> bool {
        let Some(g) = self.group_slot(group) else {
            return false;
        };
        let group = self.group_mut(g);
        match group.place_slots.get(&place) {
            Some(&slot) => {
                drop_place(group, slot);
                true
            }
            None => false,
        }
    }

    /// Moves the alerts raised so far into `out`.
    pub fn take_alerts(&mut self, out: &mut Vec<Alert>) {
        out.append(&mut self.alerts);
    }

    /// Moves the groups whose members' positions changed since the last call into `out`.
    pub fn take_changed(&mut self, out: &mut Vec<GroupId>) {
        for g in self.dirty.drain(..) {
            if let Some(group) = self.groups[g as usize].as_mut()
                && group.dirty
            {
                group.dirty = false;
                out.push(group.id);
            }
        }
    }

    /// The members of `group` with a position, as the group may see them.
    pub fn view(&self, group: GroupId) -> Vec<Seen> {
        let Some(group) = self
            .group_slot(group)
            .and_then(|g| self.groups[g as usize].as_ref())
        else {
            return Vec::new();
        };
        group
            .members
            .iter()
            .zip(&group.spots)
            .filter(|(m, _)| m.user != NONE && m.flags & M_FIX != 0)
            .map(|(m, spot)| {
                let approx = m.flags & M_APPROX != 0;
                let full = self.users[m.user as usize].fix.unpack();
                Seen {
                    user: self.ids[m.user as usize],
                    precision: if approx {
                        Precision::Approx
                    } else {
                        Precision::Exact
                    },
                    at: spot.at(),
                    accuracy_m: if approx {
                        APPROX_CELL_HALF_DIAGONAL_M
                    } else {
                        spot.accuracy_m()
                    },
                    taken_ms: m.taken_ms,
                    lost: m.flags & M_LOST != 0,
                    altitude_m: full.altitude_m.filter(|_| !approx),
                    speed_mps: full.speed_mps.filter(|_| !approx),
                    heading_deg: full.heading_deg.filter(|_| !approx),
                    battery: full.battery.filter(|_| !approx),
                }
            })
            .collect()
    }

    /// The confirmed proximity of two members of `group`: `None` when unknown (not seeded yet,
    /// or either fix stale, lost or missing).
    pub fn proximity(
        &self,
        group: GroupId,
        a: UserId,
        b: UserId,
        now_ms: i64,
    ) -> Option<Proximity> {
        let g = self.group_slot(group)?;
        let (i, j) = (
            self.member_of(self.user_slot(a)?, g)? as usize,
            self.member_of(self.user_slot(b)?, g)? as usize,
        );
        let group = self.groups[g as usize].as_ref()?;
        let lost_after = group.config.lost_after_ms;
        if i == j
            || !group.members[i].fresh(now_ms, lost_after)
            || !group.members[j].fresh(now_ms, lost_after)
        {
            return None;
        }
        group.pairs.state(i, j)
    }

    /// The places of `group` `user` is confirmed inside.
    pub fn inside(&self, group: GroupId, user: UserId) -> Vec<PlaceId> {
        let Some(g) = self.group_slot(group) else {
            return Vec::new();
        };
        let Some(i) = self.user_slot(user).and_then(|u| self.member_of(u, g)) else {
            return Vec::new();
        };
        let group = self.groups[g as usize].as_ref().expect("indexed");
        group.tracked[i as usize]
            .iter()
            .filter(|(_, t)| t.state() == Some(true))
            .map(|&(slot, _)| group.place_ids[slot as usize])
            .collect()
    }

    /// What the engine holds and its bytes.
    pub fn footprint(&self) -> Footprint {
        let live_groups = || self.groups.iter().flatten();
        let buckets = if self.index.capacity() == 0 {
            0
        } else {
            (self.index.capacity() * 8 / 7).next_power_of_two()
        };
        Footprint {
            users: self.index.len(),
            user_bytes: self.users.capacity() * size_of::<User>()
                + self.ids.capacity() * size_of::<UserId>()
                + buckets * (size_of::<u32>() + 1),
            memberships: live_groups().map(|g| g.live).sum(),
            membership_bytes: self.links.capacity() * size_of::<Link>()
                + live_groups()
                    .map(|g| {
                        g.members.capacity() * size_of::<Member>()
                            + g.spots.capacity() * size_of::<Spot>()
                            + g.tracked.capacity() * size_of::<Vec<(u32, Track)>>()
                            + g.tracked
                                .iter()
                                .map(|t| t.capacity() * size_of::<(u32, Track)>())
                                .sum::<usize>()
                    })
                    .sum::<usize>(),
            pairs: live_groups().map(|g| g.pairs.len()).sum(),
            pair_bytes: live_groups().map(|g| g.pairs.bytes()).sum(),
            groups: self.group_index.len(),
            places: live_groups().map(|g| g.places.len()).sum(),
        }
    }
}

/// Asks for every cache line of `items` without waiting for any (a hint: it changes nothing,
/// and never faults whatever the address).
#[inline]
fn prefetch_lines<T>(items: &[T]) {
    prefetch_range(items.as_ptr().cast(), std::mem::size_of_val(items));
}

/// As [`prefetch_lines`], for `bytes` bytes from `start`.
#[inline]
fn prefetch_range(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut at = 0;
        while at < bytes + 63 {
            let line = start.wrapping_add(at.min(bytes.saturating_sub(1)));
            // SAFETY: `_mm_prefetch` is a hint to the cache: it reads nothing into the program
            // and cannot fault, whatever the address; SSE is part of the x86-64 baseline.
            #[allow(unsafe_code)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast());
            }
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}

/// Copies a fix into a member record, snapped to the cell at approximate precision.
fn place_member(member: &mut Member, spot: &mut Spot, fix: &Packed) {
    if member.flags & M_APPROX != 0 {
        let cell = approx_cell(LatLon::from_e7(fix.lat_e7, fix.lon_e7));
        spot.lat_e7 = crate::fix::round(cell.lat() * 1e7) as i32;
        spot.lon_e7 = crate::fix::round(cell.lon() * 1e7) as i32;
    } else {
        spot.lat_e7 = fix.lat_e7;
        spot.lon_e7 = fix.lon_e7;
    }
    spot.accuracy_dm = fix.accuracy_dm;
    member.taken_ms = fix.taken_ms;
    member.flags = (member.flags | M_FIX) & !M_LOST;
}

fn mark(group: &mut Group, g: u32, dirty: &mut Vec<u32>) {
    if !group.dirty {
        group.dirty = true;
        dirty.push(g);
    }
}

/// A member's readings stopped (stale, paused): changes being read are forgotten.
fn interrupt(group: &mut Group, i: usize) {
    for j in 0..group.members.len() {
        if j != i {
            group.pairs.interrupt(i, j);
        }
    }
    for (_, track) in &mut group.tracked[i] {
        track.interrupt();
    }
}

fn drop_place(group: &mut Group, slot: u32) {
    group.places.remove(slot);
    group.place_slots.remove(&group.place_ids[slot as usize]);
    for (tracked, member) in group.tracked.iter_mut().zip(&mut group.members) {
        tracked.retain(|(s, _)| *s != slot);
        if tracked.is_empty() {
            member.flags &= !M_TRACKS;
        }
    }
}

/// Reads the pair of member `i` (whose fix it is) and member `j` of `group`.
#[inline]
fn read_pair(
    group: &mut Group,
    i: usize,
    j: usize,
    rule: &Rule,
    probe: &Probe,
    now_ms: i64,
    out: &mut Out<'_>,
) {
    let lost_after = group.config.lost_after_ms;
    let (me, mine) = (&group.members[i], group.spots[i]);
    let accuracy = mine.accuracy_m();
    let apart = rule.apart_m();
    // Settled apart and farther than the apart threshold with both accuracies added (more than
    // their combined radius): the reading, if the other member's fix counts at all, is apart
    // and changes nothing, as `observe` would conclude — known from their spot alone, without
    // their record or two square roots (`read_group` has ruled out most of them from their
    // latitudes already; the plane is for the rest).
    let spot = group.spots[j];
    if group.pairs.settled(i, j) == Some(Proximity::Apart)
        && probe.beyond(spot.at(), apart + accuracy + spot.accuracy_m())
    {
        return;
    }
    // The reading, from the two spots alone. One that says nothing (between the thresholds, or
    // within the accuracies) or says what the pair is settled in changes nothing, whether or not
    // the other member's fix counts: their record (a cache miss at a million users, for the
    // pairs settled near) is read only for a reading that may change the pair.
    let u = combined_accuracy(accuracy, spot.accuracy_m());
    let d = probe.distance_m(spot.at(), apart + u + 100.0);
    if !group.pairs.may_change(i, j, rule, d, u) {
        return;
    }
    let other = &group.members[j];
    if !other.fresh(now_ms, lost_after) {
        return;
    }
    let (user, other_user, instant) = (me.user, other.user, me.taken_ms.max(other.taken_ms));
    if let Some(t) = group.pairs.observe(i, j, rule, d, u, instant) {
        let (a, b) = out.pair(user, other_user);
        let what = match t.to {
            Proximity::Near => What::Near { a, b },
            Proximity::Apart => What::Apart { a, b },
        };
        out.alert(group.id, now_ms, what);
    }
}

/// Reads member `i`'s new position against the group's other members and its places.
///
/// Dwell and cooldown run on the readings' own time: a pair's reading is as new as the newer of
/// its two fixes, a place's as the member's fix. A batch of fixes that arrives at once (a
/// phone catching up) is therefore as many readings as it has fixes, while both members' fixes
/// of one instant still count once.
fn read_group(group: &mut Group, i: usize, now_ms: i64, out: &mut Out<'_>) {
    let lost_after = group.config.lost_after_ms;
    let me = &group.members[i];
    if now_ms - me.taken_ms > lost_after {
        return; // a stale fix only updates the view
    }
    let (user, taken_ms) = (me.user, me.taken_ms);
    let (at, accuracy) = (group.spots[i].at(), group.spots[i].accuracy_m());
    let my_lat_e7 = group.spots[i].lat_e7;
    let probe = Probe::new(at);
    if let Some(rule) = group.config.proximity {
        let apart = rule.apart_m();
        // First, without a branch, the members that need more than a glance: all but those
        // settled apart whose latitude alone puts them past the apart threshold with both
        // accuracies (most, in a group spread over a town); a bit each, 64 at a time.
        let screen = MeridianScreen::new(apart + accuracy + 0.001);
        let n = group.members.len();
        for from in (0..n).step_by(64) {
            let to = n.min(from + 64);
            let mut look = 0u64;
            let row = &group.pairs.row(i, n)[from..to];
            for (k, (spot, &byte)) in group.spots[from..to].iter().zip(row).enumerate() {
                let done =
                    Pairs::apart(byte) & screen.far(my_lat_e7, spot.lat_e7, spot.accuracy_dm);
                look |= u64::from(!done) << k;
            }
            while look != 0 {
                let j = from + look.trailing_zeros() as usize;
                look &= look - 1;
                if j == i {
                    continue;
                }
                read_pair(group, i, j, &rule, &probe, now_ms, out);
            }
        }
    }
    if group.places.is_empty() {
        return;
    }
    let Group {
        places,
        members,
        tracked,
        place_ids,
        id,
        ..
    } = group;
    let member = &mut members[i];
    let seeded = member.flags & M_SEEDED != 0;
    member.flags |= M_SEEDED;
    let tracking = member.flags & M_TRACKS != 0;
    // Read only for an alert: the id is a cache line of its own.
    let user_id = |out: &Out<'_>| out.ids[user as usize];
    // Places being tracked: read each (a far fix reads outside).
    let tracks = &mut tracked[i];
    let mut k = 0;
    while tracking && k < tracks.len() {
        let (slot, ref mut track) = tracks[k];
        let place = places
            .get(slot)
            .expect("tracks are dropped with their place");
        let reading = place.read_from(&probe, accuracy);
        if let Some((inside, _)) = track.feed(reading, &debounce(place), taken_ms) {
            let (place, user) = (place_ids[slot as usize], user_id(out));
            let what = if inside {
                What::Arrived { user, place }
            } else {
                What::Left { user, place }
            };
            out.alert(*id, now_ms, what);
        }
        if track.state() == Some(false) && reading == Some(false) {
            tracks.swap_remove(k);
        } else {
            k += 1;
        }
    }
    // Places the fix may be inside of that are not tracked yet.
    let before = if tracking { tracks.len() } else { 0 };
    let mut pushed = false;
    places.candidates(&probe, accuracy, |slot, place| {
        if tracks[..before].iter().any(|(s, _)| *s == slot) {
            return;
        }
        let reading = place.read_from(&probe, accuracy);
        if reading == Some(false) {
            return;
        }
        let mut track = Track::default();
        if seeded {
            // Untracked means confirmed outside: the reading goes through the dwell.
            track.seed(false, taken_ms);
            if let Some((true, _)) = track.feed(reading, &debounce(place), taken_ms) {
                let (place, user) = (place_ids[slot as usize], user_id(out));
                out.alert(*id, now_ms, What::Arrived { user, place });
            }
        } else {
            // The first reading of a member is seeded silently.
            track.feed(reading, &debounce(place), taken_ms);
        }
        tracks.push((slot, track));
        pushed = true;
    });
    if tracking || pushed {
        if tracks.is_empty() {
            member.flags &= !M_TRACKS;
        } else {
            member.flags |= M_TRACKS;
        }
    }
}

fn debounce(place: &Place) -> Debounce {
    Debounce {
        dwell_fixes: u32::MAX,
        dwell_ms: place.dwell_ms,
        cooldown_ms: 0,
    }
}
