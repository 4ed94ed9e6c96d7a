//! A user's latest fix, kept compact, and the rule that decides whether a new fix replaces it.
//!
//! The hot state of a user is one [`Packed`] fix (24 bytes): latitude and longitude as
//! 1e-7-degree integers (1.1 cm at the equator), the device's timestamp, and accuracy,
//! altitude, speed, heading (whole degrees) and battery in small integers. Fixes arrive late and twice (a phone
//! retries, two paths race); only a fix newer than the one held replaces it, so the state always
//! moves forward in the device's time. A fix stamped too far in the future (a broken clock) is
//! refused rather than allowed to block every honest fix after it.

use crate::geo::{CoordError, LatLon};
use std::collections::HashMap;
use std::hash::Hash;

/// How far ahead of the server's clock a fix's timestamp may be, ms.
pub const MAX_CLOCK_AHEAD_MS: i64 = 60_000;
/// Accuracy radii above this are stored as this (metres).
const MAX_ACCURACY_M: f64 = 6_553.5;

/// A fix as a device reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub at: LatLon,
    /// The 68 % radius, metres (≥ 0).
    pub accuracy_m: f64,
    pub altitude_m: Option<f64>,
    pub speed_mps: Option<f64>,
    /// Degrees clockwise from true north, [0, 360).
    pub heading_deg: Option<f64>,
    /// Percent, 0–100.
    pub battery: Option<u8>,
    /// When the device took it, Unix ms.
    pub taken_ms: i64,
}

/// Why a fix was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Coordinates(#[from] CoordError),
    #[error("accuracy must be a number of metres, 0 or more")]
    Accuracy,
    #[error("speed, altitude and heading must be finite; heading from 0 to 360, speed 0 or more")]
    Motion,
    #[error("battery is a percentage from 0 to 100")]
    Battery,
    #[error("the fix is dated more than a minute ahead of the server's clock")]
    FromTheFuture,
    #[error("a fix at least as new is already held")]
    NotNewer,
}

/// The compact form of a fix: the hot state of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packed {
    pub(crate) taken_ms: i64,
    pub(crate) lat_e7: i32,
    pub(crate) lon_e7: i32,
    /// Decimetres, saturating.
    pub(crate) accuracy_dm: u16,
    /// Metres; `i16::MIN` = unknown.
    altitude_m: i16,
    /// Centimetres per second; `u16::MAX` = unknown.
    speed_cms: u16,
    /// Heading in whole degrees (0..360, [`NO_HEADING`] = unknown) times 128, plus battery
    /// percent (0..=100, [`NO_BATTERY`] = unknown): both in one word, so a fix is 24 bytes.
    heading_battery: u16,
}

/// `x.round()` (half away from zero; the sign of a zero aside) without a call into libm:
/// baseline x86-64 has no rounding instruction (SSE4.1), and packing a fix rounds six numbers.
/// Exact below 2^52, where the truncation and the fraction are exact; above, `x` is whole.
#[inline]
pub(crate) fn round(x: f64) -> f64 {
    if x.abs() < 4_503_599_627_370_496.0 {
        let whole = x as i64 as f64;
        let fraction = x - whole;
        // Without a branch: the fraction of a coordinate is as likely either side of a half.
        whole + f64::from(u8::from(fraction >= 0.5)) - f64::from(u8::from(fraction <= -0.5))
    } else {
        x
    }
}

const NO_HEADING: u16 = 511;
const NO_BATTERY: u16 = 127;

impl Packed {
    /// Checks and packs a fix.
    pub fn pack(fix: &Fix) -> Result<Self, Refused> {
        if !(fix.accuracy_m.is_finite() && fix.accuracy_m >= 0.0) {
            return Err(Refused::Accuracy);
        }
        let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
        if !(finite(fix.altitude_m) && finite(fix.speed_mps) && finite(fix.heading_deg))
            || fix.speed_mps.is_some_and(|s| s < 0.0)
            || fix.heading_deg.is_some_and(|h| !(0.0..360.0).contains(&h))
        {
            return Err(Refused::Motion);
        }
        if fix.battery.is_some_and(|b| b > 100) {
            return Err(Refused::Battery);
        }
        Ok(Self {
            taken_ms: fix.taken_ms,
            lat_e7: round(fix.at.lat() * 1e7) as i32,
            lon_e7: round(fix.at.lon() * 1e7) as i32,
            accuracy_dm: round(fix.accuracy_m.min(MAX_ACCURACY_M) * 10.0) as u16,
            altitude_m: fix
                .altitude_m
                .map_or(i16::MIN, |a| round(a).clamp(-32_767.0, 32_767.0) as i16),
            speed_cms: fix
                .speed_mps
                .map_or(u16::MAX, |s| round(s * 100.0).min(65_534.0) as u16),
            heading_battery: fix
                .heading_deg
                .map_or(NO_HEADING, |h| (round(h) as u16) % 360)
                * 128
                + fix.battery.map_or(NO_BATTERY, u16::from),
        })
    }

    /// The fix again, to the stored precision.
    pub fn unpack(&self) -> Fix {
        let at = LatLon::new(f64::from(self.lat_e7) / 1e7, f64::from(self.lon_e7) / 1e7)
            .expect("packed from a valid point");
        Fix {
            at,
            accuracy_m: f64::from(self.accuracy_dm) / 10.0,
            altitude_m: (self.altitude_m != i16::MIN).then_some(f64::from(self.altitude_m)),
            speed_mps: (self.speed_cms != u16::MAX).then_some(f64::from(self.speed_cms) / 100.0),
            heading_deg: (self.heading_battery / 128 != NO_HEADING)
                .then_some(f64::from(self.heading_battery / 128)),
            battery: (self.heading_battery % 128 != NO_BATTERY)
                .then_some((self.heading_battery % 128) as u8),
            taken_ms: self.taken_ms,
        }
    }

    pub fn taken_ms(&self) -> i64 {
        self.taken_ms
    }
}

/// The latest fix of every user, keyed by the caller's user id.
#[derive(Debug, Clone)]
pub struct Latest<K> {
    fixes: HashMap<K, Packed>,
}

impl<K> Default for Latest<K> {
    fn default() -> Self {
        Self {
            fixes: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Latest<K> {
    /// Keeps `fix` as `user`'s latest if it is valid, not from the future (by `now_ms`) and
    /// newer than the one held; answers the one it replaced.
    pub fn accept(&mut self, user: K, fix: &Fix, now_ms: i64) -> Result<Option<Fix>, Refused> {
        let packed = Packed::pack(fix)?;
        if fix.taken_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
            return Err(Refused::FromTheFuture);
        }
        match self.fixes.entry(user) {
            std::collections::hash_map::Entry::Occupied(mut held) => {
                if held.get().taken_ms >= packed.taken_ms {
                    return Err(Refused::NotNewer);
                }
                Ok(Some(std::mem::replace(held.get_mut(), packed).unpack()))
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(packed);
                Ok(None)
            }
        }
    }

    /// `user`'s latest fix.
    pub fn get(&self, user: &K) -> Option<Fix> {
        self.fixes.get(user).map(Packed::unpack)
    }

    /// Forgets `user`'s position (sharing ended: purged at once).
    pub fn purge(&mut self, user: &K) -> bool {
        self.fixes.remove(user).is_some()
    }

    pub fn len(&self) -> usize {
        self.fixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::distance_m;

    #[test]
    fn round_is_f64_round() {
        let mut noise = crate::noise::Noise(0x0005_eed0_f0dd_ba11);
        let mut xs = vec![
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.49999999999999994,
            -0.49999999999999994,
            4_503_599_627_370_495.5,
            -4_503_599_627_370_495.5,
            4_503_599_627_370_497.0,
            9.0e18,
            -9.3e18,
            1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            899_999_999.5,
        ];
        for _ in 0..100_000 {
            let scale = [1.0, 10.0, 1e3, 1e7, 9e8, 1e16][noise.below(6)];
            xs.push(noise.signed(scale));
            xs.push((noise.signed(scale)).trunc() + 0.5);
        }
        for x in xs {
            assert_eq!(round(x), x.round(), "{x}");
        }
        assert!(round(f64::NAN).is_nan());
    }

    fn fix(lat: f64, lon: f64, taken_ms: i64) -> Fix {
        Fix {
            at: LatLon::new(lat, lon).unwrap(),
            accuracy_m: 8.0,
            altitude_m: None,
            speed_mps: None,
            heading_deg: None,
            battery: None,
            taken_ms,
        }
    }

    #[test]
    fn the_hot_state_is_small_and_keeps_a_centimetre() {
        assert_eq!(std::mem::size_of::<Packed>(), 24);
        let full = Fix {
            at: LatLon::new(-33.868_820_4, 151.209_295_7).unwrap(),
            accuracy_m: 12.34,
            altitude_m: Some(58.4),
            speed_mps: Some(13.456),
            heading_deg: Some(359.6),
            battery: Some(42),
            taken_ms: 1_700_000_000_123,
        };
        let back = Packed::pack(&full).unwrap().unpack();
        assert!(distance_m(full.at, back.at) < 0.02);
        assert_eq!(back.accuracy_m, 12.3);
        assert_eq!(back.altitude_m, Some(58.0));
        assert_eq!(back.speed_mps, Some(13.46));
        assert_eq!(back.heading_deg, Some(0.0), "359.6° rounds to north");
        assert_eq!(back.battery, Some(42));
        assert_eq!(back.taken_ms, full.taken_ms);
        let east = Fix {
            heading_deg: Some(89.6),
            battery: Some(100),
            ..full
        };
        let back = Packed::pack(&east).unwrap().unpack();
        assert_eq!((back.heading_deg, back.battery), (Some(90.0), Some(100)));
        let bare = fix(90.0, -180.0, 5);
        assert_eq!(Packed::pack(&bare).unwrap().unpack(), Fix { ..bare });
    }

    #[test]
    fn only_a_newer_fix_replaces_the_one_held() {
        let mut latest = Latest::default();
        let now = 1_000_000;
        assert_eq!(
            latest.accept("ann", &fix(1.0, 1.0, now - 10), now),
            Ok(None)
        );
        let replaced = latest.accept("ann", &fix(1.1, 1.0, now), now).unwrap();
        assert_eq!(replaced.map(|f| f.taken_ms), Some(now - 10));
        // Late and repeated fixes change nothing.
        assert_eq!(
            latest.accept("ann", &fix(9.0, 9.0, now - 5), now),
            Err(Refused::NotNewer)
        );
        assert_eq!(
            latest.accept("ann", &fix(9.0, 9.0, now), now),
            Err(Refused::NotNewer)
        );
        assert_eq!(latest.get(&"ann").unwrap().at.lat(), 1.1);
        // A clock a minute and more ahead is refused, and blocks nothing after it.
        assert_eq!(
            latest.accept("ann", &fix(2.0, 2.0, now + MAX_CLOCK_AHEAD_MS + 1), now),
            Err(Refused::FromTheFuture)
        );
        assert!(latest.accept("ann", &fix(2.0, 2.0, now + 1), now).is_ok());
        assert!(latest.purge(&"ann"));
        assert_eq!(latest.get(&"ann"), None);
        assert!(latest.is_empty());
    }

    #[test]
    fn bad_fields_are_refused_with_a_reason() {
        let good = fix(0.0, 0.0, 1);
        let bad = [
            (
                Fix {
                    accuracy_m: -1.0,
                    ..good
                },
                Refused::Accuracy,
            ),
            (
                Fix {
                    accuracy_m: f64::NAN,
                    ..good
                },
                Refused::Accuracy,
            ),
            (
                Fix {
                    speed_mps: Some(-0.1),
                    ..good
                },
                Refused::Motion,
            ),
            (
                Fix {
                    heading_deg: Some(360.0),
                    ..good
                },
                Refused::Motion,
            ),
            (
                Fix {
                    altitude_m: Some(f64::INFINITY),
                    ..good
                },
                Refused::Motion,
            ),
            (
                Fix {
                    battery: Some(101),
                    ..good
                },
                Refused::Battery,
            ),
        ];
        let mut latest = Latest::default();
        for (fix, why) in bad {
            assert_eq!(latest.accept(1u32, &fix, 10), Err(why), "{fix:?}");
        }
        assert!(latest.is_empty());
        assert_eq!(
            Packed::pack(&Fix {
                accuracy_m: 1e9,
                ..good
            })
            .unwrap()
            .unpack()
            .accuracy_m,
            MAX_ACCURACY_M
        );
    }
}
