//! The simulated world of `loadtest location`: users in groups, each group around a home point,
//! each user walking or driving with random turns. Seeded, so a run's layout reproduces; every
//! user draws from a noise stream of its own, so the trace of one user does not depend on the
//! order in which the event loop happens to run the others.

use location_engine::noise::Noise;
use protocol::ids::{GroupId, UserId};
use protocol::location::WireFix;

/// Walking speed, m/s.
pub const WALK_MPS: f64 = 1.4;
/// Driving speed, m/s.
pub const DRIVE_MPS: f64 = 15.0;
/// Members start within this distance of their group's home, metres.
pub const START_RADIUS_M: f64 = 1_000.0;
/// Beyond this distance from home a wanderer turns back, metres.
pub const ROAM_RADIUS_M: f64 = 1_200.0;
/// How far apart the two members of a converging pair start, metres: outside the apart
/// threshold (250 m for a 200 m radius, with 7 m of combined accuracy) so the first state is
/// seeded `apart`, and they meet head-on at twice the driving speed.
pub const CONVERGING_START_M: f64 = 300.0;
/// The accuracy every fix reports, metres.
pub const ACCURACY_M: f64 = 5.0;
/// Share of wanderers that drive rather than walk.
const DRIVERS: f64 = 0.3;

/// WGS84, for metres per degree at a group's home.
const WGS84_A: f64 = 6_378_137.0;
const WGS84_E2: f64 = 0.006_694_379_990_14;

/// A group: its id and its members (indices into the users).
#[derive(Debug, Clone)]
pub struct Group {
    pub id: GroupId,
    pub members: std::ops::Range<usize>,
}

/// One simulated user: where it is relative to its group's home and how it moves.
#[derive(Debug, Clone)]
pub struct Walker {
    pub id: UserId,
    pub group: usize,
    /// Metres east and north of home.
    pub x: f64,
    pub y: f64,
    /// Radians clockwise from north.
    pub heading: f64,
    pub speed: f64,
    /// Holds its heading (a member of a converging pair) instead of wandering.
    pub straight: bool,
    home_lat: f64,
    home_lon: f64,
    /// Metres per degree of latitude and of longitude at home.
    m_per_deg_lat: f64,
    m_per_deg_lon: f64,
    last_ms: Option<i64>,
    noise: Noise,
}

/// The planned world.
#[derive(Debug, Clone)]
pub struct World {
    pub groups: Vec<Group>,
    pub walkers: Vec<Walker>,
}

/// How a world is laid out.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub users: usize,
    pub group_min: usize,
    pub group_max: usize,
    /// The first groups are this many pairs driving at each other.
    pub converging_pairs: usize,
    pub seed: u64,
}

/// A nonzero seed for a noise stream from `seed` and a stream number (splitmix64).
fn stream_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z == 0 { 1 } else { z }
}

/// Metres per degree of latitude and of longitude at `lat` (the ellipsoid's radii there).
fn metres_per_degree(lat: f64) -> (f64, f64) {
    let phi = lat.to_radians();
    let w = (1.0 - WGS84_E2 * phi.sin().powi(2)).sqrt();
    let m = WGS84_A * (1.0 - WGS84_E2) / (w * w * w);
    let n = WGS84_A / w;
    let rad = std::f64::consts::PI / 180.0;
    (m * rad, n * phi.cos() * rad)
}

impl World {
    /// Lays out `layout.users` users in groups (ids are fresh: a run never meets the state an
    /// earlier run left in a long-lived engine).
    pub fn plan(layout: &Layout) -> Self {
        let mut noise = Noise(stream_seed(layout.seed, u64::MAX));
        let mut groups = Vec::new();
        let mut walkers: Vec<Walker> = Vec::with_capacity(layout.users);
        while walkers.len() < layout.users {
            let converging = groups.len() < layout.converging_pairs;
            let size = if converging {
                2
            } else {
                layout.group_min + noise.below(layout.group_max - layout.group_min + 1)
            }
            .min(layout.users - walkers.len());
            let home_lat = noise.signed(60.0);
            let home_lon = noise.signed(180.0);
            let (m_per_deg_lat, m_per_deg_lon) = metres_per_degree(home_lat);
            let g = groups.len();
            let first = walkers.len();
            for k in 0..size {
                let i = walkers.len();
                let mut own = Noise(stream_seed(layout.seed, i as u64));
                let (x, y, heading, speed, straight) = if converging {
                    // West member heads east, east member heads west.
                    let half = CONVERGING_START_M / 2.0;
                    if k == 0 {
                        (-half, 0.0, std::f64::consts::FRAC_PI_2, DRIVE_MPS, true)
                    } else {
                        (half, 0.0, -std::f64::consts::FRAC_PI_2, DRIVE_MPS, true)
                    }
                } else {
                    let r = START_RADIUS_M * own.unit().sqrt();
                    let a = own.unit() * std::f64::consts::TAU;
                    let speed = if own.unit() < DRIVERS {
                        DRIVE_MPS
                    } else {
                        WALK_MPS
                    };
                    let heading = own.unit() * std::f64::consts::TAU;
                    (r * a.sin(), r * a.cos(), heading, speed, false)
                };
                walkers.push(Walker {
                    id: UserId::from_uuid(uuid::Uuid::new_v4()),
                    group: g,
                    x,
                    y,
                    heading,
                    speed,
                    straight,
                    home_lat,
                    home_lon,
                    m_per_deg_lat,
                    m_per_deg_lon,
                    last_ms: None,
                    noise: own,
                });
            }
            groups.push(Group {
                id: GroupId::from_uuid(uuid::Uuid::new_v4()),
                members: first..walkers.len(),
            });
        }
        Self { groups, walkers }
    }
}

impl World {
    /// This world and `other` as one (`other`'s groups and users after this one's).
    pub fn join(mut self, other: World) -> World {
        let (users, groups) = (self.walkers.len(), self.groups.len());
        self.groups.extend(other.groups.into_iter().map(|g| Group {
            id: g.id,
            members: g.members.start + users..g.members.end + users,
        }));
        self.walkers.extend(other.walkers.into_iter().map(|mut w| {
            w.group += groups;
            w
        }));
        self
    }
}

impl Walker {
    /// Moves on to time `t_ms` (Unix ms; the first call only places the walker) and answers
    /// the fix it reports there.
    pub fn fix_at(&mut self, t_ms: i64) -> WireFix {
        if let Some(last) = self.last_ms {
            // A stalled generator must not teleport anyone.
            let dt = ((t_ms - last) as f64 / 1000.0).clamp(0.0, 10.0);
            if !self.straight {
                self.turn(dt);
            }
            self.x += self.speed * dt * self.heading.sin();
            self.y += self.speed * dt * self.heading.cos();
        }
        self.last_ms = Some(t_ms);
        let (lat, lon) = self.lat_lon();
        // The binary frame carries 1/100 degree; keep the rounded heading below 360.
        let heading = (self.heading.to_degrees().rem_euclid(360.0) * 100.0).round() % 36_000.0;
        WireFix {
            t: t_ms,
            lat,
            lon,
            acc: ACCURACY_M,
            alt: None,
            speed: Some(self.speed),
            heading: Some(heading / 100.0),
            battery: None,
        }
    }

    /// Where the walker is, degrees (longitude wrapped into [-180, 180)).
    pub fn lat_lon(&self) -> (f64, f64) {
        let lat = self.home_lat + self.y / self.m_per_deg_lat;
        let lon = (self.home_lon + self.x / self.m_per_deg_lon + 180.0).rem_euclid(360.0) - 180.0;
        (lat, lon)
    }

    /// A wiggle every step, a real turn now and then (about every 20 s), and back towards home
    /// when it roamed too far.
    fn turn(&mut self, dt: f64) {
        self.heading += self.noise.signed(0.2);
        if self.noise.unit() < dt / 20.0 {
            let side = if self.noise.unit() < 0.5 { -1.0 } else { 1.0 };
            self.heading += side * (0.25 + 0.5 * self.noise.unit()) * std::f64::consts::PI;
        }
        if self.x.hypot(self.y) > ROAM_RADIUS_M {
            // Towards home, give or take 30 degrees.
            self.heading = (-self.x).atan2(-self.y) + self.noise.signed(0.52);
        }
        self.heading = self.heading.rem_euclid(std::f64::consts::TAU);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use location_engine::geo::{LatLon, distance_m};

    fn layout(users: usize, converging_pairs: usize) -> Layout {
        Layout {
            users,
            group_min: 4,
            group_max: 20,
            converging_pairs,
            seed: 7,
        }
    }

    fn at(w: &Walker) -> LatLon {
        let (lat, lon) = w.lat_lon();
        LatLon::new(lat, lon).unwrap()
    }

    #[test]
    fn groups_cover_every_user_within_their_size_bounds() {
        let w = World::plan(&layout(1000, 0));
        assert_eq!(w.walkers.len(), 1000);
        let mut next = 0;
        for (g, group) in w.groups.iter().enumerate() {
            assert_eq!(group.members.start, next);
            next = group.members.end;
            let last = g + 1 == w.groups.len();
            assert!(group.members.len() <= 20);
            assert!(last || group.members.len() >= 4, "{:?}", group.members);
            for m in group.members.clone() {
                assert_eq!(w.walkers[m].group, g);
                assert!(w.walkers[m].lat_lon().0.abs() <= 60.01);
                assert!(w.walkers[m].x.hypot(w.walkers[m].y) <= START_RADIUS_M);
            }
        }
        assert_eq!(next, 1000);
        // The same seed lays out the same world (ids aside).
        let again = World::plan(&layout(1000, 0));
        assert_eq!(again.groups.len(), w.groups.len());
        assert_eq!(again.walkers[999].x, w.walkers[999].x);
    }

    #[test]
    fn walkers_move_at_their_speed_and_stay_near_home() {
        let mut w = World::plan(&layout(200, 0));
        for walker in &mut w.walkers {
            let t0 = 1_700_000_000_000;
            walker.fix_at(t0);
            let before = at(walker);
            walker.fix_at(t0 + 500);
            // 0.5 s at its speed (a straight step on the tangent plane).
            let d = distance_m(before, at(walker));
            assert!(
                (d - walker.speed * 0.5).abs() < 0.01,
                "{d} {}",
                walker.speed
            );
            for k in 2..2_000 {
                let f = walker.fix_at(t0 + k * 500);
                assert!((0.0..360.0).contains(&f.heading.unwrap()));
            }
            // After 1000 s, still in the neighbourhood.
            assert!(walker.x.hypot(walker.y) < ROAM_RADIUS_M + 200.0);
        }
    }

    #[test]
    fn converging_pairs_start_300_m_apart_and_meet() {
        let mut w = World::plan(&layout(50, 2));
        assert_eq!(
            (w.groups[0].members.len(), w.groups[1].members.len()),
            (2, 2)
        );
        assert!(w.walkers[..4].iter().all(|w| w.straight));
        assert!(!w.walkers[4].straight);
        let t0 = 1_700_000_000_000;
        let (a, rest) = w.walkers.split_at_mut(1);
        let b = &mut rest[0];
        a[0].fix_at(t0);
        b.fix_at(t0);
        let d0 = distance_m(at(&a[0]), at(b));
        assert!((d0 - CONVERGING_START_M).abs() < 0.5, "{d0}");
        a[0].fix_at(t0 + 4_000);
        b.fix_at(t0 + 4_000);
        let d4 = distance_m(at(&a[0]), at(b));
        assert!(
            (d4 - (CONVERGING_START_M - 8.0 * DRIVE_MPS)).abs() < 0.5,
            "{d4}"
        );
    }
}
