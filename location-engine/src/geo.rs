//! Positions on the WGS84 ellipsoid and the distance between them.
//!
//! Two points close together (the case of every proximity check) are measured on the local
//! plane at their mid-latitude, with the ellipsoid's meridional (M) and prime-vertical (N)
//! radii of curvature there: under a centimetre from the geodesic up to 10 km when both points
//! lie within ±[`PLANE_MAX_LAT`] (checked against Karney's algorithm in the tests), and a
//! hundredth of a haversine's cost. Anything else (farther apart, or nearer a pole, where the
//! plane bends) is measured by Karney's geodesic (geographiclib), which is exact to nanometres
//! everywhere, across the antimeridian and over the poles. Haversine is not used: its single
//! radius is up to 0.56 % off.

use geographiclib_rs::{Geodesic, InverseGeodesic};
use std::sync::OnceLock;

/// WGS84 semi-major axis, metres.
pub const WGS84_A: f64 = 6_378_137.0;
/// WGS84 flattening.
pub const WGS84_F: f64 = 1.0 / 298.257_223_563;
/// First eccentricity squared.
const E2: f64 = WGS84_F * (2.0 - WGS84_F);
/// Highest latitude (degrees, either hemisphere) at which the local plane is used.
pub const PLANE_MAX_LAT: f64 = 70.0;
/// Longest distance (metres) measured on the local plane.
pub const PLANE_MAX_M: f64 = 10_000.0;

/// A point given in degrees: latitude in [-90, 90], longitude in [-180, 180].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatLon {
    lat: f64,
    lon: f64,
}

/// Why a coordinate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CoordError {
    #[error("latitude must be a number from -90 to 90")]
    Latitude,
    #[error("longitude must be a number from -180 to 180")]
    Longitude,
}

impl LatLon {
    /// 0° N, 0° E.
    pub const ORIGIN: LatLon = LatLon { lat: 0.0, lon: 0.0 };

    /// A point, if the coordinates are finite and in range.
    pub fn new(lat: f64, lon: f64) -> Result<Self, CoordError> {
        if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
            return Err(CoordError::Latitude);
        }
        if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
            return Err(CoordError::Longitude);
        }
        Ok(Self { lat, lon })
    }

    /// From 1e-7-degree integers that were stored from a valid point.
    pub(crate) fn from_e7(lat_e7: i32, lon_e7: i32) -> Self {
        Self {
            lat: f64::from(lat_e7) / 1e7,
            lon: f64::from(lon_e7) / 1e7,
        }
    }

    pub fn lat(self) -> f64 {
        self.lat
    }

    pub fn lon(self) -> f64 {
        self.lon
    }
}

/// The distance in metres between `a` and `b` along the WGS84 ellipsoid.
pub fn distance_m(a: LatLon, b: LatLon) -> f64 {
    if a.lat.abs() <= PLANE_MAX_LAT && b.lat.abs() <= PLANE_MAX_LAT {
        let d = plane_m(a, b);
        if d <= PLANE_MAX_M {
            return d;
        }
    }
    geodesic_m(a, b)
}

/// The distance on the plane tangent at the mid-latitude (longitude difference wrapped to
/// (-180°, 180°], so a pair astride the antimeridian is as close as it is).
fn plane_m(a: LatLon, b: LatLon) -> f64 {
    let mid = ((a.lat + b.lat) * 0.5).to_radians();
    let (sin, cos) = mid.sin_cos();
    let w = 1.0 - E2 * sin * sin;
    let n = WGS84_A / w.sqrt();
    let m = WGS84_A * (1.0 - E2) / (w * w.sqrt());
    let mut dlon = b.lon - a.lon;
    if dlon > 180.0 {
        dlon -= 360.0;
    } else if dlon <= -180.0 {
        dlon += 360.0;
    }
    let x = dlon.to_radians() * n * cos;
    let y = (b.lat - a.lat).to_radians() * m;
    (x * x + y * y).sqrt()
}

/// Measures from one point to many (a group scan): the sine, cosine and radii at the point and
/// their rates of change are computed once, and the local plane at each pair's mid-latitude is
/// expanded to second order around the point, well under a millimetre from [`distance_m`]'s plane
/// up to 10 km. Past 10 km, or beyond ±70°, pairs that may be near (closer than about twice
/// `exact_below_m`) are measured exactly by [`distance_m`]; clearly farther ones get the
/// estimate (it is used only to know they are far).
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    at: LatLon,
    sin: f64,
    cos: f64,
    m: f64,
    n: f64,
    /// dM/dφ and dN/dφ, metres per radian.
    dm: f64,
    dn: f64,
}

impl Probe {
    pub fn new(at: LatLon) -> Self {
        let (sin, cos) = sin_cos_latitude(at.lat.to_radians());
        // 1/√w once (a square root and a division, not two of each): N = a/√w, M = a(1−e²)/w^1.5.
        let r = 1.0 / (1.0 - E2 * sin * sin).sqrt();
        let r2 = r * r;
        let n = WGS84_A * r;
        let m = WGS84_A * (1.0 - E2) * r * r2;
        let rate = E2 * sin * cos * r2;
        Self {
            at,
            sin,
            cos,
            n,
            m,
            dn: n * rate,
            dm: 3.0 * m * rate,
        }
    }

    pub fn at(&self) -> LatLon {
        self.at
    }

    /// The distance to `b`: as [`distance_m`] (to a millimetre) unless it is clearly more than
    /// `exact_below_m`, then an estimate that is at least `exact_below_m`.
    #[inline]
    pub fn distance_m(&self, b: LatLon, exact_below_m: f64) -> f64 {
        let Some(d2) = self.plane_squared(b) else {
            return distance_m(self.at, b);
        };
        let d = d2.sqrt();
        // Below a few thousand km the estimate is a few per cent off at worst: twice the bound
        // plus a kilometre leaves no doubt.
        if d <= PLANE_MAX_M || d > 2.0 * exact_below_m + 1_000.0 {
            d
        } else {
            distance_m(self.at, b)
        }
    }

    /// Whether [`Probe::distance_m`] to `b` is more than `m` metres for any `exact_below_m` up to
    /// `m + 100`, known without a square root (a group scan asks it of every other member, and
    /// most are far): `false` where the plane does not apply, or when unsure.
    #[inline]
    pub fn beyond(&self, b: LatLon, m: f64) -> bool {
        // A millimetre over, so that the rounded square root is still more than `m`.
        let over = m + 0.001;
        // The latitudes alone settle most pairs, with one multiplication: every way of measuring
        // here — the exact geodesic (any path covers the meridian arc between the two latitudes,
        // at least `MIN_CURVATURE_RADIUS_M` a radian), the mid-latitude plane, the probe's
        // second-order plane (its meridian radius is within 1.6 % of the true one) — is at least
        // 98 % of the minimum meridian radius times the difference in latitude.
        if (b.lat - self.at.lat).abs() * MERIDIAN_M_PER_DEG_AT_LEAST > over {
            return true;
        }
        let far = 2.0 * (m + 100.0) + 1_000.0;
        self.plane_squared(b).is_some_and(|d2| {
            d2 > over * over && (d2 <= PLANE_MAX_M * PLANE_MAX_M || d2 > far * far)
        })
    }

    /// The square of the second-order plane estimate, where it applies (both within ±70°).
    #[inline]
    fn plane_squared(&self, b: LatLon) -> Option<f64> {
        if self.at.lat.abs() > PLANE_MAX_LAT || b.lat.abs() > PLANE_MAX_LAT {
            return None;
        }
        let dlat = (b.lat - self.at.lat).to_radians();
        let mut dlon = b.lon - self.at.lon;
        if dlon > 180.0 {
            dlon -= 360.0;
        } else if dlon <= -180.0 {
            dlon += 360.0;
        }
        // The radii and cosine at the mid-latitude, to second order in half the difference.
        let h = dlat * 0.5;
        let cos_mid = self.cos - self.sin * h - self.cos * h * h * 0.5;
        let x = dlon.to_radians() * (self.n + self.dn * h) * cos_mid;
        let y = dlat * (self.m + self.dm * h);
        Some(x * x + y * y)
    }
}

/// The unit normal of the ellipsoid at `p` (the n-vector): a point on the unit sphere with no
/// seam at the antimeridian and no singularity at the poles. Two points `s` metres apart have
/// normals less than `s / MIN_CURVATURE_RADIUS_M` apart.
pub fn normal(p: LatLon) -> [f64; 3] {
    let (sl, cl) = p.lat.to_radians().sin_cos();
    let (so, co) = p.lon.to_radians().sin_cos();
    [cl * co, cl * so, sl]
}

/// The least radius of curvature of WGS84 (the meridian's, at the equator), metres.
pub const MIN_CURVATURE_RADIUS_M: f64 = 6_335_439.0;

/// The sine and cosine of a latitude `x` in radians (|x| ≤ π/2) without a call into libm (a
/// probe is made for every fix): Taylor polynomials on [-π/4, π/4], where the first term left
/// out is under 1e-19, and the complementary angle beyond. Within a few units in the last place
/// of libm's (a test compares them).
#[inline]
fn sin_cos_latitude(x: f64) -> (f64, f64) {
    // Coefficients from the highest power down, in z = y².
    const SIN: [f64; 8] = [
        1.0 / 355_687_428_096_000.0,
        -1.0 / 1_307_674_368_000.0,
        1.0 / 6_227_020_800.0,
        -1.0 / 39_916_800.0,
        1.0 / 362_880.0,
        -1.0 / 5_040.0,
        1.0 / 120.0,
        -1.0 / 6.0,
    ];
    const COS: [f64; 9] = [
        1.0 / 6_402_373_705_728_000.0,
        -1.0 / 20_922_789_888_000.0,
        1.0 / 87_178_291_200.0,
        -1.0 / 479_001_600.0,
        1.0 / 3_628_800.0,
        -1.0 / 40_320.0,
        1.0 / 720.0,
        -1.0 / 24.0,
        0.5,
    ];
    // Estrin's scheme: the powers taken in pairs, so that the chain of dependent multiplications
    // and additions is three long rather than eight (Horner's); `c` from z⁷ down.
    let estrin = |z: f64, c: &[f64]| {
        let (z2, z4) = (z * z, z * z * (z * z));
        let low = (c[7] + c[6] * z) + (c[5] + c[4] * z) * z2;
        let high = (c[3] + c[2] * z) + (c[1] + c[0] * z) * z2;
        low + high * z4
    };
    let sin = |y: f64| y + y * (y * y) * estrin(y * y, &SIN);
    let cos = |y: f64| {
        let z = y * y;
        1.0 - z * (estrin(z, &COS[1..]) + COS[0] * (z * z) * (z * z))
    };
    use std::f64::consts::{FRAC_PI_2, FRAC_PI_4};
    if x.abs() <= FRAC_PI_4 {
        (sin(x), cos(x))
    } else {
        // x = ±(π/2 − y): sin x = ±cos y, cos x = sin y (the subtraction is exact).
        let y = FRAC_PI_2 - x.abs();
        (cos(y).copysign(x), sin(y))
    }
}

/// Metres two latitudes given in 1e-7 degrees are at least apart, whichever way
/// [`Probe::distance_m`] measures (see [`Probe::beyond`]): one subtraction and one
/// multiplication, no division, for a group scan to rule out most far members.
#[inline]
pub fn meridian_m_at_least(lat_e7_a: i32, lat_e7_b: i32) -> f64 {
    f64::from(lat_e7_a.abs_diff(lat_e7_b)) * (MERIDIAN_M_PER_DEG_AT_LEAST * 1e-7)
}

/// [`meridian_m_at_least`] in whole numbers, for a scan that asks it of many points against one
/// (a group's members against the one whose fix it is) without a branch or a conversion:
/// [`MeridianScreen::far`] says a point is farther than `m` plus its accuracy only where
/// `meridian_m_at_least` does, with a margin (the thresholds are rounded up, in 1/256ths of a
/// 1e-7 degree, about 0.04 mm).
#[derive(Debug, Clone, Copy)]
pub struct MeridianScreen {
    /// `m` in 1/256ths of a 1e-7 degree of latitude, rounded up, plus one.
    base: u64,
}

impl MeridianScreen {
    /// 1/256ths of a 1e-7 degree a metre is at most worth (the meridian bound's inverse).
    const PER_M: f64 = 256.0 / (MERIDIAN_M_PER_DEG_AT_LEAST * 1e-7);
    /// A decimetre of accuracy in those units, rounded up, plus one (truncated plus two: at
    /// least that, and `ceil` is not `const` at this crate's minimum Rust); a constant, as
    /// `new` runs once a group a fix.
    const PER_DM: u64 = (0.1 * Self::PER_M) as u64 + 2;

    /// Screens against `m` metres (a NaN or negative `m`: nothing is far).
    pub fn new(m: f64) -> Self {
        let base = if m >= 0.0 {
            (m * Self::PER_M).ceil().min(1e18) as u64 + 1
        } else {
            u64::MAX / 2
        };
        Self { base }
    }

    /// Whether `meridian_m_at_least(lat_e7_a, lat_e7_b)` is more than `m` plus `accuracy_dm`
    /// decimetres, known for sure (else `false`).
    #[inline]
    pub fn far(&self, lat_e7_a: i32, lat_e7_b: i32, accuracy_dm: u16) -> bool {
        u64::from(lat_e7_a.abs_diff(lat_e7_b)) * 256
            > self.base + u64::from(accuracy_dm) * Self::PER_DM
    }
}

/// Metres a degree of latitude is at least worth, whichever way [`Probe::distance_m`] measures:
/// 98 % of the minimum meridian radius (see [`Probe::beyond`]).
const MERIDIAN_M_PER_DEG_AT_LEAST: f64 =
    0.98 * MIN_CURVATURE_RADIUS_M * std::f64::consts::PI / 180.0;

/// Earth-centred, earth-fixed coordinates of `p` on the ellipsoid, metres.
fn ecef(p: LatLon) -> [f64; 3] {
    let (sl, cl) = p.lat.to_radians().sin_cos();
    let (so, co) = p.lon.to_radians().sin_cos();
    let n = WGS84_A / (1.0 - E2 * sl * sl).sqrt();
    [n * cl * co, n * cl * so, n * (1.0 - E2) * sl]
}

/// The plane tangent to the ellipsoid at an origin, with east and north axes in metres: the frame
/// places are drawn in. It has no seam at the antimeridian and works at the poles; within 10 km
/// of the origin it is millimetres off the ellipsoid's distances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    origin: [f64; 3],
    east: [f64; 3],
    north: [f64; 3],
}

impl Frame {
    pub fn at(origin: LatLon) -> Self {
        let (sl, cl) = origin.lat.to_radians().sin_cos();
        let (so, co) = origin.lon.to_radians().sin_cos();
        Self {
            origin: ecef(origin),
            east: [-so, co, 0.0],
            north: [-sl * co, -sl * so, cl],
        }
    }

    /// `p` as (east, north) metres from the origin.
    pub fn project(&self, p: LatLon) -> [f64; 2] {
        let q = ecef(p);
        let d = [
            q[0] - self.origin[0],
            q[1] - self.origin[1],
            q[2] - self.origin[2],
        ];
        let dot = |a: [f64; 3]| a[0] * d[0] + a[1] * d[1] + a[2] * d[2];
        [dot(self.east), dot(self.north)]
    }
}

/// The side of an approximate-location cell, degrees of latitude (about 1.1 km).
pub const APPROX_CELL_DEG: f64 = 0.01;
/// Half the diagonal of an approximate cell, metres: the uncertainty shown with it.
pub const APPROX_CELL_HALF_DIAGONAL_M: f64 = 790.0;

/// The centre of the approximate cell `p` falls in: rows of [`APPROX_CELL_DEG`] of latitude,
/// each cut into as many cells as make them about as wide as tall (one cell at the poles), so
/// cells are ~1.1 km squares everywhere and their centres say nothing finer.
pub fn approx_cell(p: LatLon) -> LatLon {
    let rows = (180.0 / APPROX_CELL_DEG).round();
    let row = ((p.lat + 90.0) / APPROX_CELL_DEG).floor().min(rows - 1.0);
    let lat = -90.0 + (row + 0.5) * APPROX_CELL_DEG;
    let cells = (360.0 / APPROX_CELL_DEG * lat.to_radians().cos())
        .round()
        .max(1.0);
    let width = 360.0 / cells;
    let col = ((p.lon + 180.0) / width).floor().rem_euclid(cells);
    let lon = -180.0 + (col + 0.5) * width;
    LatLon { lat, lon }
}

/// Karney's geodesic distance.
fn geodesic_m(a: LatLon, b: LatLon) -> f64 {
    static WGS84: OnceLock<Geodesic> = OnceLock::new();
    let geodesic = WGS84.get_or_init(Geodesic::wgs84);
    geodesic.inverse(a.lat, a.lon, b.lat, b.lon)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lon: f64) -> LatLon {
        LatLon::new(lat, lon).unwrap()
    }

    use crate::noise::Noise;

    #[test]
    fn the_local_plane_is_within_a_centimetre_of_the_geodesic_up_to_ten_km() {
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut worst: f64 = 0.0;
        for _ in 0..20_000 {
            let lat = (noise.unit() * 2.0 - 1.0) * (PLANE_MAX_LAT - 0.1);
            let lon = (noise.unit() * 2.0 - 1.0) * 180.0;
            // Up to ~9 km away in any direction (0.08° of latitude ≈ 8.9 km).
            let dlat = (noise.unit() * 2.0 - 1.0) * 0.08;
            let dlon = (noise.unit() * 2.0 - 1.0) * 0.08;
            let a = p(lat, lon);
            let mut lon2 = lon + dlon;
            if lon2 > 180.0 {
                lon2 -= 360.0;
            } else if lon2 < -180.0 {
                lon2 += 360.0;
            }
            let b = p((lat + dlat).clamp(-90.0, 90.0), lon2);
            let exact = geodesic_m(a, b);
            if exact > PLANE_MAX_M {
                continue;
            }
            let err = (plane_m(a, b) - exact).abs();
            worst = worst.max(err);
            assert!(err < 0.01, "{a:?} {b:?}: plane off by {err} m at {exact} m");
            assert_eq!(distance_m(a, b), plane_m(a, b));
        }
        assert!(worst > 0.0, "the plane was compared at all");
    }

    #[test]
    fn far_and_polar_pairs_are_measured_by_the_geodesic() {
        // 1° of longitude at the equator is 111,319.49 m on WGS84.
        let d = distance_m(p(0.0, 0.0), p(0.0, 1.0));
        assert!((d - 111_319.491).abs() < 0.01, "{d}");
        // Paris–London, a known geodesic: 343,923.1 m (Karney).
        let d = distance_m(p(48.8566, 2.3522), p(51.5074, -0.1278));
        assert!((d - geodesic_m(p(48.8566, 2.3522), p(51.5074, -0.1278))).abs() < 1e-6);
        assert!((d - 343_923.1).abs() < 1.0, "{d}");
        // Over the north pole: two points 0.0001° from it on opposite meridians are ~22 m
        // apart, not half the world.
        let d = distance_m(p(89.9999, 0.0), p(89.9999, 180.0));
        assert!((d - 22.34).abs() < 0.05, "{d}");
        // Near the pole the plane would be metres off; the geodesic is used there.
        let (a, b) = (p(85.0, 10.0), p(85.05, 10.5));
        assert_eq!(distance_m(a, b), geodesic_m(a, b));
        assert!((plane_m(a, b) - geodesic_m(a, b)).abs() > 0.01);
    }

    #[test]
    fn pairs_astride_the_antimeridian_are_as_close_as_they_are() {
        let (a, b) = (p(0.0, 179.999), p(0.0, -179.999));
        let d = distance_m(a, b);
        assert!((d - 222.64).abs() < 0.01, "{d}");
        assert!((d - geodesic_m(a, b)).abs() < 0.01);
        assert_eq!(d, plane_m(a, b), "measured on the plane, wrapped");
        assert_eq!(distance_m(p(10.0, 180.0), p(10.0, -180.0)), 0.0);
    }

    #[test]
    fn the_probe_is_exact_near_and_only_estimates_the_far() {
        let mut noise = Noise(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let lat = (noise.unit() * 2.0 - 1.0) * 89.0;
            let lon = (noise.unit() * 2.0 - 1.0) * 180.0;
            let a = p(lat, lon);
            let spread = [0.001, 0.01, 0.05, 0.1, 1.0, 20.0][(noise.unit() * 6.0) as usize];
            let b = p(
                (lat + (noise.unit() * 2.0 - 1.0) * spread).clamp(-90.0, 90.0),
                ((lon + (noise.unit() * 2.0 - 1.0) * spread + 540.0) % 360.0) - 180.0,
            );
            let bound = 1_000.0;
            let exact = distance_m(a, b);
            let probed = Probe::new(a).distance_m(b, bound);
            if exact <= PLANE_MAX_M
                && a.lat().abs() <= PLANE_MAX_LAT
                && b.lat().abs() <= PLANE_MAX_LAT
            {
                assert!(
                    (probed - exact).abs() < 0.001,
                    "{a:?} {b:?}: {probed} for {exact}"
                );
            } else if exact <= 2.0 * bound + 900.0 {
                assert_eq!(probed, exact, "{a:?} {b:?}");
            } else {
                assert!(probed > bound, "{a:?} {b:?}: {probed} for {exact}");
            }
        }
    }

    #[test]
    fn the_latitude_sine_and_cosine_are_libm_s() {
        let mut noise = Noise(0x51_2c05);
        let mut xs: Vec<f64> = [
            0.0,
            90.0,
            -90.0,
            45.0,
            -45.0,
            44.999_999_9,
            45.000_000_1,
            1e-9,
        ]
        .into_iter()
        .map(f64::to_radians)
        .collect();
        xs.extend((0..200_000).map(|_| noise.signed(90.0).to_radians()));
        for x in xs {
            let (s, c) = sin_cos_latitude(x);
            let (ls, lc) = x.sin_cos();
            assert!(
                (s - ls).abs() <= 4e-16 && (c - lc).abs() <= 4e-16,
                "{x}: {s} {c} vs {ls} {lc}"
            );
        }
    }

    fn to_e7(p: LatLon) -> (i32, i32) {
        (
            (p.lat() * 1e7).round() as i32,
            (p.lon() * 1e7).round() as i32,
        )
    }

    #[test]
    fn the_meridian_screen_says_far_only_where_the_bound_does() {
        // Pairs of latitudes a few 1e-7 degrees either side of the screen's threshold, over
        // every scale of `m` and accuracy: where the screen says far, the bound it stands for
        // must too; and it must not give up more than a hair of it.
        let mut noise = Noise(0x5c4e_e11e_d00d_f00d);
        let (mut far, mut missed) = (0, 0);
        for _ in 0..200_000 {
            let m = [0.0, 1.0, 250.0, 1_000.0, 60_000.0][noise.below(5)] * noise.unit();
            let accuracy_dm = [0, 50, 1_000, u16::MAX][noise.below(4)];
            let accuracy_dm = (f64::from(accuracy_dm) * noise.unit()) as u16;
            let screen = MeridianScreen::new(m);
            let want = m + f64::from(accuracy_dm) / 10.0;
            let edge = want / (MERIDIAN_M_PER_DEG_AT_LEAST * 1e-7);
            let a = (noise.signed(80.0) * 1e7) as i32;
            let d = (edge + noise.signed(300.0)).max(0.0) as i32;
            let b = if noise.unit() < 0.5 { a + d } else { a - d };
            let bound = meridian_m_at_least(a, b);
            if screen.far(a, b, accuracy_dm) {
                far += 1;
                assert!(bound > want, "{a} {b} {accuracy_dm} {m}: {bound} ≤ {want}");
            } else if bound > want * 1.001 + 0.001 {
                missed += 1;
            }
        }
        assert!(far > 50_000, "the edge was crossed: {far}");
        assert_eq!(missed, 0, "the screen gives up no more than a hair");
        // Nothing is far from a NaN or negative threshold.
        for m in [f64::NAN, -1.0] {
            assert!(!MeridianScreen::new(m).far(-900_000_000, 900_000_000, 0));
        }
    }

    #[test]
    fn beyond_never_says_more_than_the_distance_does() {
        let mut noise = Noise(0x0bad_5eed_1234_5679);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..50_000 {
            let lat = noise.signed(89.5);
            let lon = noise.signed(180.0);
            let a = p(lat, lon);
            let spread = [0.0005, 0.002, 0.01, 0.05, 0.1, 1.0][noise.below(6)];
            let b = p(
                (lat + noise.signed(spread)).clamp(-90.0, 90.0),
                ((lon + noise.signed(spread) + 540.0) % 360.0) - 180.0,
            );
            let probe = Probe::new(a);
            let mut m = [0.0, 10.0, 250.0, 350.0, 4_000.0][noise.below(5)];
            // Past 10 km the estimate and the exact distance differ a little: a bound between
            // the two must not be said to be passed on the estimate's word.
            let (estimate, exact) = (probe.distance_m(b, 0.0), distance_m(a, b));
            if noise.unit() < 0.3 && estimate > exact {
                m = (estimate + exact) / 2.0;
            }
            let d = probe.distance_m(b, m);
            // The latitudes' lower bound, on the points as the engine stores them.
            let (a7, b7) = (to_e7(a), to_e7(b));
            let (a7p, b7p) = (LatLon::from_e7(a7.0, a7.1), LatLon::from_e7(b7.0, b7.1));
            let low = meridian_m_at_least(a7.0, b7.0);
            for e in [0.0, m, 1e9] {
                let d = Probe::new(a7p).distance_m(b7p, e);
                assert!(low <= d, "{a7p:?} {b7p:?}: at least {low} but {d}");
            }
            if probe.beyond(b, m) {
                yes += 1;
                for e in [0.0, m, m + 100.0] {
                    let d = probe.distance_m(b, e);
                    assert!(d > m, "{a:?} {b:?}: beyond {m} but {d} (exact below {e})");
                }
            } else {
                no += 1;
                // Unsure is allowed only off the plane or where the exact path may be taken.
                if a.lat().abs() <= PLANE_MAX_LAT
                    && b.lat().abs() <= PLANE_MAX_LAT
                    && d <= PLANE_MAX_M
                {
                    assert!(
                        d <= m + 0.01,
                        "{a:?} {b:?}: {d} > {m} on the plane, not said"
                    );
                }
            }
        }
        assert!(yes > 10_000 && no > 10_000, "{yes} {no}");
    }

    #[test]
    fn the_tangent_frame_keeps_distances_near_its_origin_even_at_the_pole() {
        for origin in [p(45.0, 7.0), p(0.0, 180.0), p(89.99, 0.0), p(-90.0, 0.0)] {
            let frame = Frame::at(origin);
            let o = frame.project(origin);
            assert!(o[0].abs() < 1e-6 && o[1].abs() < 1e-6);
            for (dlat, dlon) in [(0.02, 0.0), (-0.03, 0.05), (0.0, 0.3), (0.05, -179.0)] {
                let lat = (origin.lat() + dlat).clamp(-90.0, 90.0);
                let lon = ((origin.lon() + dlon + 540.0) % 360.0) - 180.0;
                let q = p(lat, lon);
                let exact = geodesic_m(origin, q);
                if exact > 10_000.0 {
                    continue;
                }
                let e = frame.project(q);
                let err = (e[0].hypot(e[1]) - exact).abs();
                assert!(err < 0.01, "{origin:?} {q:?}: {err} m off at {exact} m");
            }
        }
        // North is north: a point due north of a mid-latitude origin has no east component.
        let f = Frame::at(p(45.0, 7.0));
        let q = f.project(p(45.01, 7.0));
        assert!(q[0].abs() < 1e-6 && q[1] > 1_000.0);
        // Across the antimeridian there is no seam.
        let f = Frame::at(p(10.0, 179.999));
        let q = f.project(p(10.0, -179.999));
        assert!((q[0] - 219.26).abs() < 0.05, "{q:?}");
    }

    #[test]
    fn normals_of_points_s_apart_are_less_than_s_over_the_least_radius_apart() {
        let mut noise = Noise(42);
        for _ in 0..5_000 {
            let a = p(
                (noise.unit() * 2.0 - 1.0) * 90.0,
                (noise.unit() * 2.0 - 1.0) * 180.0,
            );
            let b = p(
                (a.lat() + (noise.unit() * 2.0 - 1.0) * 0.2).clamp(-90.0, 90.0),
                ((a.lon() + (noise.unit() * 2.0 - 1.0) * 0.2 + 540.0) % 360.0) - 180.0,
            );
            let (na, nb) = (normal(a), normal(b));
            let chord =
                ((na[0] - nb[0]).powi(2) + (na[1] - nb[1]).powi(2) + (na[2] - nb[2]).powi(2))
                    .sqrt();
            let s = geodesic_m(a, b);
            assert!(
                chord * MIN_CURVATURE_RADIUS_M <= s * 1.000_001 + 1e-6,
                "{a:?} {b:?}"
            );
        }
    }

    #[test]
    fn approximate_cells_are_about_a_kilometre_and_hide_the_fix() {
        let mut noise = Noise(7);
        for _ in 0..20_000 {
            let q = p(
                (noise.unit() * 2.0 - 1.0) * 90.0,
                (noise.unit() * 2.0 - 1.0) * 180.0,
            );
            let c = approx_cell(q);
            let d = distance_m(q, c);
            assert!(
                d <= APPROX_CELL_HALF_DIAGONAL_M,
                "{q:?} is {d} m from its cell {c:?}"
            );
            assert_eq!(approx_cell(c), c, "a centre is its own cell");
            // A nudge of a metre or two stays in the cell unless it crosses a border, and
            // the centre never moves with it.
            let nudged = p(q.lat(), (q.lon() + 0.000_01).min(180.0));
            let c2 = approx_cell(nudged);
            assert!(c2 == c || distance_m(c, c2) > 500.0, "{q:?}");
        }
        // The row at the pole is a cap ~1.1 km across, cut into 3 wedges.
        let wedges: std::collections::BTreeSet<_> = (0..360)
            .map(|lon| {
                approx_cell(p(89.999, f64::from(lon) - 180.0))
                    .lon()
                    .to_bits()
            })
            .collect();
        assert_eq!(wedges.len(), 3);
        assert_eq!(
            approx_cell(p(90.0, 0.0)).lat(),
            approx_cell(p(89.991, 100.0)).lat()
        );
        assert_eq!(approx_cell(p(0.0, 180.0)), approx_cell(p(0.0, -180.0)));
    }

    #[test]
    fn bad_coordinates_are_refused() {
        assert_eq!(LatLon::new(90.5, 0.0), Err(CoordError::Latitude));
        assert_eq!(LatLon::new(f64::NAN, 0.0), Err(CoordError::Latitude));
        assert_eq!(LatLon::new(0.0, -180.1), Err(CoordError::Longitude));
        assert_eq!(LatLon::new(0.0, f64::INFINITY), Err(CoordError::Longitude));
        assert!(LatLon::new(-90.0, 180.0).is_ok());
    }
}
