//! Places: a group's geofences (a circle or a polygon) and the reading of one fix against them.
//!
//! A place is drawn in the plane tangent to the ellipsoid at its centre ([`Frame`]), so it has no
//! seam at the antimeridian and may sit on a pole. A fix reads *inside* when it is deeper inside
//! than its accuracy radius, *outside* when it is farther out than its accuracy radius plus the
//! place's margin (max(50 m, 0.2·r), at most 250 m, r the place's reach), and undecided between:
//! the same hysteresis as pairs, so a phone on the fence does not flap.
//!
//! A group's places are scanned when there are few ([`SCAN_MAX`]); past that they are looked up
//! in an rstar R-tree of boxes around their normals ([`crate::geo::normal`]), which has no seam or
//! pole either. Both answer the same candidates (a test checks); the scan is faster for the
//! handful of places a family or a club keeps (see the `location` bench).

use crate::geo::{Frame, LatLon, MIN_CURVATURE_RADIUS_M, Probe, normal};
use rstar::{AABB, RTree, RTreeObject};

/// Places a group may have.
pub const MAX_PLACES_PER_GROUP: usize = 100_000;
/// Vertices a polygon may have.
pub const MAX_VERTICES: usize = 256;
/// The least radius of a circle, metres (a phone's fix is rarely better than 5–10 m).
pub const MIN_RADIUS_M: f64 = 10.0;
/// The greatest reach of a place from its centre, metres.
pub const MAX_REACH_M: f64 = 50_000.0;
/// Up to this many places a group's places are scanned rather than looked up in the tree.
pub const SCAN_MAX: usize = 16;

/// A place's outline.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Circle {
        center: LatLon,
        radius_m: f64,
    },
    /// A simple polygon (no edge crosses another), vertices in order, not repeated at the end.
    Polygon {
        vertices: Vec<LatLon>,
    },
}

/// Why a place was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("a circle's radius must be from 10 m to 50 km")]
    Radius,
    #[error("a polygon has 3 to 256 vertices")]
    Vertices,
    #[error("a polygon must lie within 50 km of its centre")]
    TooLarge,
    #[error("a polygon's edges must not cross, and it must enclose an area")]
    NotSimple,
    #[error("a group has at most 100,000 places")]
    TooMany,
    #[error("the dwell time must be from 0 to 24 hours")]
    Dwell,
    #[error("a latitude must be from -90 to 90 degrees and a longitude from -180 to 180")]
    Coordinates,
}

impl Shape {
    /// The outline a client described (`protocol::location::PlaceShape`).
    pub fn from_wire(shape: &protocol::location::PlaceShape) -> Result<Self, PlaceError> {
        use protocol::location::PlaceShape;
        let at = |lat: f64, lon: f64| LatLon::new(lat, lon).map_err(|_| PlaceError::Coordinates);
        Ok(match shape {
            PlaceShape::Circle { lat, lon, radius_m } => Shape::Circle {
                center: at(*lat, *lon)?,
                radius_m: *radius_m,
            },
            PlaceShape::Polygon { points } => {
                if !(3..=MAX_VERTICES).contains(&points.len()) {
                    return Err(PlaceError::Vertices);
                }
                Shape::Polygon {
                    vertices: points
                        .iter()
                        .map(|&[lat, lon]| at(lat, lon))
                        .collect::<Result<_, _>>()?,
                }
            }
        })
    }
}

/// A place ready to read fixes against.
#[derive(Debug, Clone)]
pub struct Place {
    frame: Frame,
    outline: Outline,
    /// The farthest the outline reaches from the centre, metres.
    reach_m: f64,
    /// How long a new reading (inside or outside) must hold before it is confirmed, ms.
    pub dwell_ms: i64,
    /// The centre's normal (for the tree) and position (for the scan).
    center: [f64; 3],
    origin: LatLon,
}

#[derive(Debug, Clone)]
enum Outline {
    Circle(f64),
    Polygon(Vec<[f64; 2]>),
}

impl Place {
    /// Checks `shape` and draws it in its own frame.
    pub fn new(shape: &Shape, dwell_ms: i64) -> Result<Self, PlaceError> {
        if !(0..=86_400_000).contains(&dwell_ms) {
            return Err(PlaceError::Dwell);
        }
        match shape {
            Shape::Circle { center, radius_m } => {
                if !(MIN_RADIUS_M..=MAX_REACH_M).contains(radius_m) {
                    return Err(PlaceError::Radius);
                }
                Ok(Self {
                    frame: Frame::at(*center),
                    outline: Outline::Circle(*radius_m),
                    reach_m: *radius_m,
                    dwell_ms,
                    center: normal(*center),
                    origin: *center,
                })
            }
            Shape::Polygon { vertices } => {
                if !(3..=MAX_VERTICES).contains(&vertices.len()) {
                    return Err(PlaceError::Vertices);
                }
                // The centre: the normalised mean of the vertices' normals (no seam, no pole).
                let mut sum = [0.0; 3];
                for v in vertices {
                    let n = normal(*v);
                    (0..3).for_each(|i| sum[i] += n[i]);
                }
                let len = (sum[0] * sum[0] + sum[1] * sum[1] + sum[2] * sum[2]).sqrt();
                if len < 0.5 {
                    return Err(PlaceError::TooLarge);
                }
                let lat = (sum[2] / len).asin().to_degrees();
                let lon = sum[1].atan2(sum[0]).to_degrees();
                let center = LatLon::new(lat.clamp(-90.0, 90.0), lon.clamp(-180.0, 180.0))
                    .map_err(|_| PlaceError::TooLarge)?;
                let frame = Frame::at(center);
                let points: Vec<[f64; 2]> = vertices.iter().map(|v| frame.project(*v)).collect();
                let reach_m = points.iter().map(|p| p[0].hypot(p[1])).fold(0.0, f64::max);
                if reach_m > MAX_REACH_M {
                    return Err(PlaceError::TooLarge);
                }
                if !simple(&points) {
                    return Err(PlaceError::NotSimple);
                }
                Ok(Self {
                    frame,
                    outline: Outline::Polygon(points),
                    reach_m,
                    dwell_ms,
                    center: normal(center),
                    origin: center,
                })
            }
        }
    }

    /// The margin beyond the outline a fix must clear to read outside, metres.
    pub fn margin_m(&self) -> f64 {
        (0.2 * self.reach_m).clamp(50.0, 250.0)
    }

    /// How far `p` is from the outline: negative inside, metres.
    pub fn signed_distance_m(&self, p: LatLon) -> f64 {
        let q = self.frame.project(p);
        match &self.outline {
            Outline::Circle(r) => (q[0] * q[0] + q[1] * q[1]).sqrt() - r,
            Outline::Polygon(points) => {
                let mut inside = false;
                let mut nearest = f64::INFINITY;
                let mut j = points.len() - 1;
                for i in 0..points.len() {
                    let (a, b) = (points[j], points[i]);
                    if (b[1] > q[1]) != (a[1] > q[1])
                        && q[0] < (a[0] - b[0]) * (q[1] - b[1]) / (a[1] - b[1]) + b[0]
                    {
                        inside = !inside;
                    }
                    nearest = nearest.min(to_segment(q, a, b));
                    j = i;
                }
                if inside { -nearest } else { nearest }
            }
        }
    }

    /// What a fix at `p` with accuracy radius `accuracy_m` says: `Some(true)` inside,
    /// `Some(false)` outside, `None` undecided.
    pub fn read(&self, p: LatLon, accuracy_m: f64) -> Option<bool> {
        self.judge(self.signed_distance_m(p), accuracy_m)
    }

    /// As [`Place::read`], for the fix a probe stands at (a circle is measured by the probe,
    /// without a projection).
    #[inline]
    pub fn read_from(&self, probe: &Probe, accuracy_m: f64) -> Option<bool> {
        let d = match &self.outline {
            Outline::Circle(r) => {
                probe.distance_m(self.origin, r + self.margin_m() + accuracy_m) - r
            }
            Outline::Polygon(_) => self.signed_distance_m(probe.at()),
        };
        self.judge(d, accuracy_m)
    }

    fn judge(&self, d: f64, accuracy_m: f64) -> Option<bool> {
        if d + accuracy_m < 0.0 {
            Some(true)
        } else if d - accuracy_m > self.margin_m() {
            Some(false)
        } else {
            None
        }
    }

    /// Whether a fix whose normal is `n`, with accuracy radius `accuracy_m`, could read anything
    /// but outside: a cheap test on normals, never wrong in the direction that matters.
    #[inline]
    pub fn may_touch(&self, n: [f64; 3], accuracy_m: f64) -> bool {
        let reach = (self.reach_m + self.margin_m() + accuracy_m) / MIN_CURVATURE_RADIUS_M;
        let d = [
            n[0] - self.center[0],
            n[1] - self.center[1],
            n[2] - self.center[2],
        ];
        d[0] * d[0] + d[1] * d[1] + d[2] * d[2] <= reach * reach * 1.000_001
    }

    fn envelope(&self) -> AABB<[f64; 3]> {
        let h = (self.reach_m + self.margin_m()) / MIN_CURVATURE_RADIUS_M * 1.000_001;
        let c = self.center;
        AABB::from_corners(
            [c[0] - h, c[1] - h, c[2] - h],
            [c[0] + h, c[1] + h, c[2] + h],
        )
    }
}

fn to_segment(q: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    let ab = [b[0] - a[0], b[1] - a[1]];
    let aq = [q[0] - a[0], q[1] - a[1]];
    let len2 = ab[0] * ab[0] + ab[1] * ab[1];
    let t = if len2 > 0.0 {
        ((aq[0] * ab[0] + aq[1] * ab[1]) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (aq[0] - t * ab[0]).hypot(aq[1] - t * ab[1])
}

/// Whether a closed polyline encloses an area without any two edges crossing (O(n²), n ≤ 256,
/// once per edit).
fn simple(points: &[[f64; 2]]) -> bool {
    let n = points.len();
    let area: f64 = (0..n)
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum();
    if area.abs() < 1.0 {
        return false;
    }
    let cross = |o: [f64; 2], a: [f64; 2], b: [f64; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    for i in 0..n {
        let (a, b) = (points[i], points[(i + 1) % n]);
        for j in i + 1..n {
            if j == i + 1 || (i == 0 && j == n - 1) {
                continue; // neighbours share a vertex
            }
            let (c, d) = (points[j], points[(j + 1) % n]);
            let (d1, d2) = (cross(a, b, c), cross(a, b, d));
            let (d3, d4) = (cross(c, d, a), cross(c, d, b));
            if (d1 > 0.0) != (d2 > 0.0) && (d3 > 0.0) != (d4 > 0.0) && d1 != 0.0 && d3 != 0.0 {
                return false;
            }
        }
    }
    true
}

#[derive(Debug, PartialEq)]
struct Boxed {
    slot: u32,
    envelope: AABB<[f64; 3]>,
}

impl RTreeObject for Boxed {
    type Envelope = AABB<[f64; 3]>;
    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// A group's places, by slot (slots are stable while a place lives; a freed slot is reused).
#[derive(Debug, Default)]
#[repr(C)] // what a fix reads first
pub struct Places {
    /// What the scan reads of each slot, 24 bytes (a free slot reaches nowhere): a fix far from
    /// every place reads only these, not the 152-byte places.
    scan: Vec<Reach>,
    live: usize,
    /// Built (bulk-loaded) when there are more than [`SCAN_MAX`] places, then edited in place;
    /// dropped when they are again at most [`SCAN_MAX`].
    tree: Option<Box<RTree<Boxed>>>,
    slots: Vec<Option<Place>>,
    free: Vec<u32>,
}

/// A place's centre and how far from it a fix may read anything but outside (before its
/// accuracy): reach plus margin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reach {
    origin: LatLon,
    reach_m: f64,
}

impl Reach {
    const NOWHERE: Reach = Reach {
        origin: LatLon::ORIGIN,
        reach_m: f64::NEG_INFINITY,
    };

    fn of(place: &Place) -> Self {
        Reach {
            origin: place.origin,
            reach_m: place.reach_m + place.margin_m(),
        }
    }
}

impl Places {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn get(&self, slot: u32) -> Option<&Place> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// Adds a place; answers its slot.
    pub fn insert(&mut self, place: Place) -> Result<u32, PlaceError> {
        if self.live >= MAX_PLACES_PER_GROUP {
            return Err(PlaceError::TooMany);
        }
        let envelope = place.envelope();
        let reach = Reach::of(&place);
        let slot = crate::put(&mut self.slots, &mut self.free, Some(place));
        if self.scan.len() <= slot as usize {
            self.scan.resize(slot as usize + 1, Reach::NOWHERE);
        }
        self.scan[slot as usize] = reach;
        self.live += 1;
        match &mut self.tree {
            Some(tree) => tree.insert(Boxed { slot, envelope }),
            None => self.reindex(),
        }
        Ok(slot)
    }

    /// Removes the place in `slot`.
    pub fn remove(&mut self, slot: u32) -> Option<Place> {
        let place = self.slots.get_mut(slot as usize)?.take()?;
        self.scan[slot as usize] = Reach::NOWHERE;
        self.free.push(slot);
        self.live -= 1;
        match &mut self.tree {
            Some(tree) if self.live > SCAN_MAX => {
                let boxed = Boxed {
                    slot,
                    envelope: place.envelope(),
                };
                tree.remove(&boxed);
            }
            _ => self.reindex(),
        }
        Some(place)
    }

    fn reindex(&mut self) {
        self.tree = (self.live > SCAN_MAX).then(|| {
            Box::new(RTree::bulk_load(
                self.slots
                    .iter()
                    .enumerate()
                    .filter_map(|(slot, p)| {
                        p.as_ref().map(|p| Boxed {
                            slot: slot as u32,
                            envelope: p.envelope(),
                        })
                    })
                    .collect(),
            ))
        });
    }

    /// Calls `f` with every place a fix where `probe` stands, accuracy `accuracy_m`, may read
    /// inside of or undecided against (the rest it reads outside), and perhaps a few more.
    #[inline]
    pub fn candidates(&self, probe: &Probe, accuracy_m: f64, mut f: impl FnMut(u32, &Place)) {
        match &self.tree {
            None => {
                for (slot, near) in self.scan.iter().enumerate() {
                    let reach = near.reach_m + accuracy_m;
                    // A free slot reaches -∞: never a candidate. Most places are far: `beyond`
                    // says so without a square root where it can.
                    if !probe.beyond(near.origin, reach + 1.0)
                        && probe.distance_m(near.origin, reach) <= reach + 1.0
                        && let Some(place) = &self.slots[slot]
                    {
                        f(slot as u32, place);
                    }
                }
            }
            Some(tree) => {
                let n = normal(probe.at());
                let h = accuracy_m / MIN_CURVATURE_RADIUS_M * 1.000_001;
                let query = AABB::from_corners(
                    [n[0] - h, n[1] - h, n[2] - h],
                    [n[0] + h, n[1] + h, n[2] + h],
                );
                for boxed in tree.locate_in_envelope_intersecting(query) {
                    let place = self.slots[boxed.slot as usize]
                        .as_ref()
                        .expect("the tree holds live places");
                    if place.may_touch(n, accuracy_m) {
                        f(boxed.slot, place);
                    }
                }
            }
        }
    }

    /// What [`Places::candidates`] reads first, for reading it ahead (see `Engine::warm`): the
    /// reaches a scan reads, unless the places go through the tree (whose walk is not read
    /// ahead).
    pub(crate) fn scan(&self) -> Option<&[Reach]> {
        self.tree.is_none().then_some(&self.scan[..])
    }

    /// Every live place, by slot.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Place)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, p)| p.as_ref().map(|p| (slot as u32, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lon: f64) -> LatLon {
        LatLon::new(lat, lon).unwrap()
    }

    fn circle(lat: f64, lon: f64, r: f64) -> Place {
        Place::new(
            &Shape::Circle {
                center: p(lat, lon),
                radius_m: r,
            },
            0,
        )
        .unwrap()
    }

    /// A point `east` and `north` metres from `at` (small offsets, mid-latitudes).
    fn offset(at: LatLon, east: f64, north: f64) -> LatLon {
        let lat = at.lat() + north / 111_132.0;
        let lon = at.lon() + east / (111_412.0 * at.lat().to_radians().cos());
        p(lat, ((lon + 540.0) % 360.0) - 180.0)
    }

    #[test]
    fn a_circle_reads_inside_outside_and_holds_between() {
        let c = circle(48.85, 2.35, 100.0);
        let at = p(48.85, 2.35);
        assert_eq!(c.read(offset(at, 50.0, 0.0), 10.0), Some(true));
        assert_eq!(
            c.read(offset(at, 95.0, 0.0), 10.0),
            None,
            "within the accuracy"
        );
        assert_eq!(
            c.read(offset(at, 140.0, 0.0), 10.0),
            None,
            "inside the margin"
        );
        assert_eq!(c.read(offset(at, 170.0, 0.0), 10.0), Some(false));
        assert_eq!(c.margin_m(), 50.0);
    }

    #[test]
    fn a_polygon_reads_by_its_outline_not_its_box() {
        // A right triangle with legs of 1 km: the far corner of its box is outside.
        let o = p(45.0, 7.0);
        let tri = Place::new(
            &Shape::Polygon {
                vertices: vec![o, offset(o, 1_000.0, 0.0), offset(o, 0.0, 1_000.0)],
            },
            0,
        )
        .unwrap();
        assert_eq!(tri.read(offset(o, 200.0, 200.0), 5.0), Some(true));
        assert_eq!(
            tri.read(offset(o, 900.0, 900.0), 5.0),
            Some(false),
            "box corner"
        );
        let edge = tri.signed_distance_m(offset(o, 500.0, -30.0));
        assert!((edge - 30.0).abs() < 0.1, "{edge}");
        let deep = tri.signed_distance_m(offset(o, 100.0, 500.0));
        assert!((deep + 100.0).abs() < 0.1, "{deep}");
    }

    #[test]
    fn places_astride_the_antimeridian_and_on_a_pole_have_no_seam() {
        let dateline = circle(-17.0, 180.0, 500.0);
        assert_eq!(dateline.read(p(-17.0, -179.998), 5.0), Some(true));
        assert_eq!(dateline.read(p(-17.0, 179.998), 5.0), Some(true));
        assert_eq!(dateline.read(p(-17.0, -179.99), 5.0), Some(false));
        let pole = circle(90.0, 0.0, 1_000.0);
        for lon in [-180.0, -90.0, 0.0, 45.0, 179.0] {
            assert_eq!(pole.read(p(89.995, lon), 5.0), Some(true), "{lon}");
            assert_eq!(pole.read(p(89.98, lon), 5.0), Some(false), "{lon}");
        }
        // A square around the south pole, drawn by its four corners.
        let square = Place::new(
            &Shape::Polygon {
                vertices: [45.0, 135.0, -135.0, -45.0]
                    .map(|lon| p(-89.99, lon))
                    .to_vec(),
            },
            0,
        )
        .unwrap();
        assert_eq!(square.read(p(-90.0, 0.0), 5.0), Some(true));
        assert_eq!(square.read(p(-89.995, 100.0), 5.0), Some(true));
        assert_eq!(square.read(p(-89.97, 100.0), 5.0), Some(false));
    }

    #[test]
    fn bad_shapes_are_refused_with_a_reason() {
        let o = p(0.0, 0.0);
        let bad = |shape: Shape| Place::new(&shape, 0).unwrap_err();
        assert_eq!(
            bad(Shape::Circle {
                center: o,
                radius_m: 5.0
            }),
            PlaceError::Radius
        );
        assert_eq!(
            bad(Shape::Circle {
                center: o,
                radius_m: f64::NAN
            }),
            PlaceError::Radius
        );
        assert_eq!(
            bad(Shape::Polygon {
                vertices: vec![o, p(0.0, 0.01)]
            }),
            PlaceError::Vertices
        );
        let bow_tie = vec![o, p(0.01, 0.01), p(0.0, 0.01), p(0.01, 0.0)];
        assert_eq!(
            bad(Shape::Polygon { vertices: bow_tie }),
            PlaceError::NotSimple
        );
        let line = vec![o, p(0.0, 0.01), p(0.0, 0.02)];
        assert_eq!(
            bad(Shape::Polygon { vertices: line }),
            PlaceError::NotSimple
        );
        let huge = vec![o, p(0.0, 1.0), p(1.0, 0.0)];
        assert_eq!(bad(Shape::Polygon { vertices: huge }), PlaceError::TooLarge);
        assert_eq!(
            Place::new(
                &Shape::Circle {
                    center: o,
                    radius_m: 50.0
                },
                -1
            )
            .unwrap_err(),
            PlaceError::Dwell
        );
    }

    #[test]
    fn the_tree_and_the_scan_never_leave_out_a_place_the_fix_may_be_in() {
        let mut noise = crate::noise::Noise(0x5eed);
        let mut next = move || noise.unit();
        let mut places = Vec::new();
        for _ in 0..400 {
            // Clustered near the antimeridian and the north pole, where seams would show.
            let (lat, lon) = if next() < 0.5 {
                (next() * 0.2 - 0.1, 179.9 + next() * 0.2)
            } else {
                (89.8 + next() * 0.2, next() * 360.0)
            };
            let lon = ((lon + 540.0) % 360.0) - 180.0;
            places.push(circle(lat, lon, 50.0 + next() * 2_000.0));
        }
        let mut big = Places::default();
        for place in &places {
            big.insert(place.clone()).unwrap();
        }
        assert!(big.tree.is_some());
        for _ in 0..2_000 {
            let (lat, lon) = if next() < 0.5 {
                (next() * 0.2 - 0.1, 179.9 + next() * 0.2)
            } else {
                (89.8 + next() * 0.2, next() * 360.0)
            };
            let at = p(lat, ((lon + 540.0) % 360.0) - 180.0);
            let accuracy = next() * 100.0;
            let n = normal(at);
            let probe = Probe::new(at);
            let mut from_tree = Vec::new();
            big.candidates(&probe, accuracy, |slot, _| from_tree.push(slot));
            from_tree.sort_unstable();
            let mut by_normals: Vec<u32> = big
                .iter()
                .filter(|(_, place)| place.may_touch(n, accuracy))
                .map(|(slot, _)| slot)
                .collect();
            by_normals.sort_unstable();
            assert_eq!(from_tree, by_normals);
            // The scan (used for few places) offers a subset of the tree's, and neither ever
            // leaves out a place the fix reads inside of or undecided against.
            let mut scanned = Vec::new();
            for (slot, place) in big.iter() {
                if place.read(at, accuracy) != Some(false) {
                    assert!(from_tree.contains(&slot), "{at:?} {slot}");
                }
                assert_eq!(place.read(at, accuracy), place.read_from(&probe, accuracy));
                let mut small = Places::default();
                small.insert(place.clone()).unwrap();
                small.candidates(&probe, accuracy, |_, _| scanned.push(slot));
            }
            for slot in &scanned {
                assert!(from_tree.contains(slot));
            }
            for (slot, place) in big.iter() {
                if place.read(at, accuracy) != Some(false) {
                    assert!(scanned.contains(&slot), "{at:?} {slot}");
                }
            }
        }
        // The tree is edited in place: after removals and re-insertions it still finds exactly
        // the places whose boxes hold the fix (a removed one left behind would panic).
        for slot in (0..200).step_by(2) {
            big.remove(slot).unwrap();
        }
        for place in places.iter().take(50) {
            big.insert(place.clone()).unwrap();
        }
        assert_eq!(big.len(), 350);
        for _ in 0..500 {
            let at = p(
                next() * 0.2 - 0.1,
                ((179.9 + next() * 0.2 + 540.0) % 360.0) - 180.0,
            );
            let (n, probe) = (normal(at), Probe::new(at));
            let mut from_tree = Vec::new();
            big.candidates(&probe, 30.0, |slot, _| from_tree.push(slot));
            from_tree.sort_unstable();
            let by_normals: Vec<u32> = big
                .iter()
                .filter(|(_, place)| place.may_touch(n, 30.0))
                .map(|(slot, _)| slot)
                .collect();
            assert_eq!(from_tree, by_normals);
        }
        // Removing places frees slots for reuse and drops back to the scan.
        for slot in 0..400 {
            let _ = big.remove(slot);
        }
        assert_eq!(big.len(), 0);
        assert!(big.tree.is_none());
        assert_eq!(big.insert(circle(0.0, 0.0, 100.0)).unwrap(), 399);
    }
}
