//! The engine through its public API: proximity, places, staleness, privacy, and a two-engine
//! sharding simulation. Time is an argument everywhere; nothing sleeps.

use location_engine::engine::{
    Alert, Config, Engine, GroupConfig, Handle, IngestError, MAX_GROUP_MEMBERS, Precision,
    ShareError, Sharing, WARM_ABOVE_USERS, What,
};
use location_engine::fix::{Fix, Refused};
use location_engine::geo::{LatLon, approx_cell, distance_m};
use location_engine::noise::Noise;
use location_engine::places::Shape;
use location_engine::proximity::{Proximity, Rule};
use protocol::ids::{GroupId, PlaceId, UserId};
use uuid::Uuid;

const T0: i64 = 1_800_000_000_000;
const R: f64 = 200.0;

fn user(n: u128) -> UserId {
    UserId(Uuid::from_u128(n))
}
fn group(n: u128) -> GroupId {
    GroupId(Uuid::from_u128(0x6000 + n))
}
fn place(n: u128) -> PlaceId {
    PlaceId(Uuid::from_u128(0x9000 + n))
}

fn p(lat: f64, lon: f64) -> LatLon {
    LatLon::new(lat, lon).unwrap()
}

/// `east` and `north` metres from `at` (mid-latitudes, small offsets; exact distances are
/// always measured, never assumed).
fn offset(at: LatLon, east: f64, north: f64) -> LatLon {
    let lat = at.lat() + north / 111_132.0;
    let lon = at.lon() + east / (111_412.0 * at.lat().to_radians().cos());
    p(lat, ((lon + 540.0) % 360.0) - 180.0)
}

fn fix(at: LatLon, taken_ms: i64) -> Fix {
    Fix {
        at,
        accuracy_m: 5.0,
        altitude_m: Some(120.0),
        speed_mps: Some(1.5),
        heading_deg: Some(90.0),
        battery: Some(80),
        taken_ms,
    }
}

fn engine() -> Engine {
    Engine::new(Config {
        incarnation: 7,
        seed: 1,
    })
}

fn forever(precision: Precision) -> Sharing {
    Sharing {
        precision,
        until_ms: i64::MAX,
    }
}

/// A group with proximity at `R`, no cooldown, lost after a minute.
fn setup(members: &[u128]) -> Engine {
    let mut e = engine();
    e.configure_group(
        group(1),
        GroupConfig {
            proximity: Some(Rule {
                cooldown_ms: 0,
                ..Rule::new(R)
            }),
            lost_after_ms: 60_000,
        },
    );
    for &m in members {
        e.share(user(m), group(1), forever(Precision::Exact), T0)
            .unwrap();
    }
    e
}

fn alerts(e: &mut Engine) -> Vec<What> {
    let mut out = Vec::new();
    e.take_alerts(&mut out);
    out.into_iter().map(|a| a.what).collect()
}

fn near(a: u128, b: u128) -> What {
    let (a, b) = (user(a.min(b)), user(a.max(b)));
    What::Near { a, b }
}
fn apart(a: u128, b: u128) -> What {
    let (a, b) = (user(a.min(b)), user(a.max(b)));
    What::Apart { a, b }
}

#[test]
fn a_pair_is_seeded_silently_then_alerted_once_per_crossing() {
    let mut e = setup(&[1, 2]);
    let home = p(48.8566, 2.3522);
    e.ingest(user(1), &fix(home, T0), T0).unwrap();
    e.ingest(user(2), &fix(offset(home, 500.0, 0.0), T0), T0)
        .unwrap();
    assert_eq!(alerts(&mut e), vec![], "seeded apart, silently");
    assert_eq!(
        e.proximity(group(1), user(1), user(2), T0),
        Some(Proximity::Apart)
    );
    // Bob walks in: one fix inside is not enough, the second confirms.
    e.ingest(
        user(2),
        &fix(offset(home, 100.0, 0.0), T0 + 1_000),
        T0 + 1_000,
    )
    .unwrap();
    assert_eq!(alerts(&mut e), vec![]);
    e.ingest(
        user(2),
        &fix(offset(home, 90.0, 0.0), T0 + 2_000),
        T0 + 2_000,
    )
    .unwrap();
    assert_eq!(alerts(&mut e), vec![near(1, 2)]);
    // Standing near produces nothing more.
    for k in 3..10 {
        e.ingest(
            user(2),
            &fix(offset(home, 80.0, 0.0), T0 + k * 1_000),
            T0 + k * 1_000,
        )
        .unwrap();
    }
    assert_eq!(alerts(&mut e), vec![]);
    // Between r and the apart threshold (250 m) it stays near.
    for k in 10..14 {
        e.ingest(
            user(2),
            &fix(offset(home, 240.0, 0.0), T0 + k * 1_000),
            T0 + k * 1_000,
        )
        .unwrap();
    }
    assert_eq!(alerts(&mut e), vec![]);
    for k in 14..16 {
        e.ingest(
            user(2),
            &fix(offset(home, 300.0, 0.0), T0 + k * 1_000),
            T0 + k * 1_000,
        )
        .unwrap();
    }
    assert_eq!(alerts(&mut e), vec![apart(1, 2)]);
}

#[test]
fn alert_ids_are_unique_and_carry_the_incarnation() {
    let mut e = setup(&[1, 2]);
    let home = p(10.0, 10.0);
    e.ingest(user(1), &fix(home, T0), T0).unwrap();
    for k in 0..40 {
        let east = if (k / 2) % 2 == 0 { 20.0 } else { 400.0 };
        let t = T0 + (k + 1) * 1_000;
        e.ingest(user(2), &fix(offset(home, east, 0.0), t), t)
            .unwrap();
    }
    let mut all: Vec<Alert> = Vec::new();
    e.take_alerts(&mut all);
    assert_eq!(all.len(), 19, "every crossing after the seed");
    let mut ids: Vec<u128> = all.iter().map(|a| a.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len());
    assert!(
        all.iter()
            .all(|a| (a.id >> 64) as u64 == 7 && a.group == group(1))
    );
}

#[test]
fn the_circle_decides_at_the_corners_of_its_box() {
    // Members near the four corners of the box around the circle (0.95·r along each axis, so
    // 1.34·r apart: beyond the apart threshold of 1.25·r), and one inside on the diagonal.
    let mut e = setup(&[1, 2, 3, 4, 5, 6]);
    let c = p(-33.87, 151.21);
    e.ingest(user(1), &fix(c, T0), T0).unwrap();
    let corners = [(0.95, 0.95), (-0.95, 0.95), (0.95, -0.95), (-0.95, -0.95)];
    for (k, (x, y)) in corners.into_iter().enumerate() {
        let at = offset(c, x * R, y * R);
        let d = distance_m(c, at);
        assert!(d > 1.3 * R && d < 1.42 * R, "{d}");
        e.ingest(user(2 + k as u128), &fix(at, T0), T0).unwrap();
    }
    let inside = offset(c, 0.6 * R, 0.6 * R); // 0.85·r
    e.ingest(user(6), &fix(inside, T0), T0).unwrap();
    for k in 2..=5 {
        assert_eq!(
            e.proximity(group(1), user(1), user(k), T0),
            Some(Proximity::Apart),
            "{k}"
        );
    }
    assert_eq!(
        e.proximity(group(1), user(1), user(6), T0),
        Some(Proximity::Near)
    );
}

#[test]
fn pairs_across_the_antimeridian_and_near_the_poles_are_judged_by_their_true_distance() {
    for (a, b, expect) in [
        // 150 m apart across the antimeridian.
        (p(-16.5, 179.9993), p(-16.5, -179.9993), Proximity::Near),
        (p(-16.5, 179.998), p(-16.5, -179.998), Proximity::Apart),
        // 85° N, 0.003° of longitude is ~29 m; 89.999° on opposite meridians is ~222 m.
        (p(85.0, 30.0), p(85.0, 30.003), Proximity::Near),
        (p(89.9995, 0.0), p(89.9995, 180.0), Proximity::Near),
        (p(89.9985, 0.0), p(89.9985, 180.0), Proximity::Apart),
        (p(-89.9999, -120.0), p(-90.0, 0.0), Proximity::Near),
        (p(-88.0, 45.0), p(-88.0, 45.1), Proximity::Apart),
    ] {
        let mut e = setup(&[1, 2]);
        e.ingest(user(1), &fix(a, T0), T0).unwrap();
        e.ingest(user(2), &fix(b, T0), T0).unwrap();
        assert_eq!(
            e.proximity(group(1), user(1), user(2), T0),
            Some(expect),
            "{a:?} {b:?} at {} m",
            distance_m(a, b)
        );
    }
}

#[test]
fn both_members_moving_in_the_same_tick_are_seen_together() {
    // Ann and Bob start 600 m apart and walk towards each other; each tick both send a fix at
    // the same `now`. The pair must turn near when they meet, whichever fix arrives first.
    for bob_first in [false, true] {
        let mut e = setup(&[1, 2]);
        let mid = p(51.5, -0.12);
        let mut got = Vec::new();
        for k in 0..8 {
            let t = T0 + k * 5_000;
            let gap = 300.0 - 40.0 * k as f64; // each is `gap` from the middle
            let a = fix(offset(mid, -gap.max(5.0), 0.0), t);
            let b = fix(offset(mid, gap.max(5.0), 0.0), t);
            let order = if bob_first {
                [(2, b), (1, a)]
            } else {
                [(1, a), (2, b)]
            };
            for (who, f) in order {
                e.ingest(user(who), &f, t).unwrap();
            }
            got.extend(alerts(&mut e).into_iter().map(|w| (k, w)));
        }
        // 2·gap apart: k=4 → 280 m, k=5 → 200 m (not below r), k=6 → 120 m (first near
        // reading: both fixes of that tick count as one), k=7 → 40 m (second: confirmed).
        assert_eq!(got, vec![(7, near(1, 2))], "bob first: {bob_first}");
    }
}

#[test]
fn jittered_traces_crossing_once_alert_once_each_way() {
    // Both walk: Ann east at 1 m/s, Bob west then back, fixes every 3 s with ±12 m of noise
    // and 8 m of reported accuracy; the true gap goes 700 → 0 → 700 m.
    let mut noise = Noise(0x2545_f491_4f6c_dd1d);
    let mut jitter = move || noise.signed(12.0);
    for seed_run in 0..20 {
        let mut e = setup(&[1, 2]);
        let o = p(35.0 + seed_run as f64, 139.0);
        let mut got = Vec::new();
        for step in 0..=466 {
            let t = T0 + step * 3_000;
            let s = step as f64 * 3.0;
            let gap = (700.0 - s).abs();
            let ann = offset(o, -gap / 2.0 + jitter(), jitter());
            let bob = offset(o, gap / 2.0 + jitter(), jitter());
            let mut a = fix(ann, t);
            let mut b = fix(bob, t);
            a.accuracy_m = 8.0;
            b.accuracy_m = 8.0;
            e.ingest(user(1), &a, t).unwrap();
            e.ingest(user(2), &b, t).unwrap();
            got.extend(alerts(&mut e));
        }
        assert_eq!(got, vec![near(1, 2), apart(1, 2)], "run {seed_run}");
    }
}

#[test]
fn late_and_repeated_fixes_are_dropped_and_bad_ones_refused() {
    let mut e = setup(&[1, 2]);
    let o = p(0.0, 0.0);
    e.ingest(user(1), &fix(o, T0), T0).unwrap();
    assert_eq!(
        e.ingest(user(1), &fix(offset(o, 900.0, 0.0), T0), T0),
        Err(IngestError::Refused(Refused::NotNewer))
    );
    assert_eq!(
        e.ingest(user(1), &fix(offset(o, 900.0, 0.0), T0 - 1), T0),
        Err(IngestError::Refused(Refused::NotNewer))
    );
    assert_eq!(
        e.ingest(user(1), &fix(o, T0 + 120_000), T0),
        Err(IngestError::Refused(Refused::FromTheFuture))
    );
    let bad = Fix {
        accuracy_m: -3.0,
        ..fix(o, T0 + 5)
    };
    assert_eq!(
        e.ingest(user(1), &bad, T0),
        Err(IngestError::Refused(Refused::Accuracy))
    );
    assert_eq!(
        e.ingest(user(9), &fix(o, T0), T0),
        Err(IngestError::NotSharing)
    );
    assert_eq!(e.view(group(1))[0].at, o, "the late fix did not move her");
}

#[test]
fn a_silent_member_is_lost_once_and_the_pair_becomes_unknown_not_apart() {
    let mut e = setup(&[1, 2]);
    let o = p(40.0, -74.0);
    e.ingest(user(1), &fix(o, T0), T0).unwrap();
    e.ingest(user(2), &fix(offset(o, 50.0, 0.0), T0), T0)
        .unwrap();
    assert_eq!(
        e.proximity(group(1), user(1), user(2), T0),
        Some(Proximity::Near)
    );
    // Ann keeps sending; Bob goes silent.
    for k in 1..=7 {
        let t = T0 + k * 10_000;
        e.ingest(user(1), &fix(offset(o, k as f64, 0.0), t), t)
            .unwrap();
        e.tick(t);
    }
    assert_eq!(
        alerts(&mut e),
        vec![What::Lost {
            user: user(2),
            last_fix_ms: T0
        }]
    );
    let t = T0 + 80_000;
    e.tick(t);
    assert_eq!(alerts(&mut e), vec![], "lost once");
    assert_eq!(e.proximity(group(1), user(1), user(2), t), None, "unknown");
    let seen = e.view(group(1));
    assert!(seen.iter().any(|s| s.user == user(2) && s.lost));
    // Ann walks 2 km away while Bob is silent: no apart is made up.
    for k in 0..5 {
        let t = t + k * 1_000;
        e.ingest(user(1), &fix(offset(o, 2_000.0, 0.0), t), t)
            .unwrap();
    }
    assert_eq!(alerts(&mut e), vec![]);
    // Bob is back, near Ann's old spot: now they are apart, through the usual dwell.
    let t = T0 + 100_000;
    e.ingest(user(2), &fix(offset(o, 50.0, 0.0), t), t).unwrap();
    assert_eq!(alerts(&mut e), vec![]);
    e.ingest(user(2), &fix(offset(o, 51.0, 0.0), t + 1_000), t + 1_000)
        .unwrap();
    assert_eq!(alerts(&mut e), vec![apart(1, 2)]);
    assert!(!e.view(group(1)).iter().any(|s| s.lost));
}

#[test]
fn a_member_who_stops_sharing_vanishes_at_once_and_is_purged() {
    let mut e = setup(&[1, 2]);
    e.share(user(2), group(2), forever(Precision::Exact), T0)
        .unwrap();
    let o = p(52.52, 13.40);
    e.ingest(user(1), &fix(o, T0), T0).unwrap();
    e.ingest(user(2), &fix(offset(o, 30.0, 0.0), T0), T0)
        .unwrap();
    let mut changed = Vec::new();
    e.take_changed(&mut changed);
    changed.sort();
    assert_eq!(changed, vec![group(1), group(2)]);
    e.stop_sharing(user(2), group(1));
    e.take_changed(&mut changed);
    assert_eq!(changed.last(), Some(&group(1)));
    assert_eq!(e.view(group(1)).len(), 1);
    assert_eq!(
        e.view(group(2)).len(),
        1,
        "still shared with the other group"
    );
    e.stop_sharing(user(2), group(2));
    assert!(e.view(group(2)).is_empty());
    // Sharing with nothing: the position is gone, fixes are refused.
    assert_eq!(
        e.ingest(user(2), &fix(o, T0 + 1_000), T0 + 1_000),
        Err(IngestError::NotSharing)
    );
    assert_eq!(e.footprint().users, 1);
    // Sharing again starts from nothing: no fix shown, and the pair is seeded silently.
    e.share(user(2), group(1), forever(Precision::Exact), T0 + 2_000)
        .unwrap();
    assert_eq!(e.view(group(1)).len(), 1);
    e.ingest(user(2), &fix(offset(o, 10.0, 0.0), T0 + 3_000), T0 + 3_000)
        .unwrap();
    assert_eq!(alerts(&mut e), vec![]);
    assert_eq!(
        e.proximity(group(1), user(1), user(2), T0 + 3_000),
        Some(Proximity::Near)
    );
}

#[test]
fn time_limited_sharing_ends_by_itself() {
    let mut e = setup(&[1]);
    let until = T0 + 60_000;
    e.share(
        user(2),
        group(1),
        Sharing {
            precision: Precision::Exact,
            until_ms: until,
        },
        T0,
    )
    .unwrap();
    let o = p(1.0, 1.0);
    e.ingest(user(2), &fix(o, T0), T0).unwrap();
    e.tick(until - 1);
    assert_eq!(e.view(group(1)).len(), 1);
    e.tick(until);
    assert!(e.view(group(1)).is_empty(), "ended at the tick");
    // A fix that races the tick finds the sharing over, and is not kept.
    e.share(
        user(3),
        group(1),
        Sharing {
            precision: Precision::Exact,
            until_ms: until,
        },
        T0,
    )
    .unwrap();
    assert_eq!(
        e.ingest(user(3), &fix(o, until), until),
        Err(IngestError::NotSharing)
    );
    assert!(e.view(group(1)).is_empty());
    assert_eq!(
        e.share(
            user(4),
            group(1),
            Sharing {
                precision: Precision::Exact,
                until_ms: T0
            },
            T0
        ),
        Err(ShareError::Expired)
    );
}

#[test]
fn approximate_members_show_only_their_cell_and_are_judged_on_it() {
    let mut e = setup(&[1]);
    e.share(user(2), group(1), forever(Precision::Approx), T0)
        .unwrap();
    e.share(user(3), group(1), forever(Precision::Approx), T0)
        .unwrap();
    let exact = p(48.123_456, 11.654_321);
    e.ingest(user(2), &fix(exact, T0), T0).unwrap();
    let seen = e.view(group(1));
    let bob = seen.iter().find(|s| s.user == user(2)).unwrap();
    assert_eq!(bob.precision, Precision::Approx);
    assert!(distance_m(bob.at, approx_cell(exact)) < 0.02);
    assert_ne!(bob.at, exact);
    assert!(bob.accuracy_m >= 500.0);
    assert_eq!(
        (bob.speed_mps, bob.heading_deg, bob.battery, bob.altitude_m),
        (None, None, None, None)
    );
    // Ann (exact) stands 60 m from Bob's true position but ~1 km from his cell's centre: the
    // pair is judged on the cell, so they are apart.
    let cell = approx_cell(exact);
    let ann = offset(exact, 0.0, 60.0);
    assert!(distance_m(ann, cell) > 250.0 || distance_m(ann, cell) < 200.0);
    e.ingest(user(1), &fix(ann, T0), T0).unwrap();
    let expect = if distance_m(ann, cell) < R {
        Proximity::Near
    } else {
        Proximity::Apart
    };
    assert_eq!(e.proximity(group(1), user(1), user(2), T0), Some(expect));
    // Carl (approx) 300 m from Bob but in the same cell: near, on the cell.
    let carl = offset(cell, 300.0, 0.0);
    assert_eq!(approx_cell(carl), cell);
    e.ingest(user(3), &fix(carl, T0), T0).unwrap();
    assert_eq!(
        e.proximity(group(1), user(2), user(3), T0),
        Some(Proximity::Near)
    );
    // The same user may share exactly with another group.
    e.share(user(2), group(2), forever(Precision::Exact), T0)
        .unwrap();
    e.ingest(user(2), &fix(exact, T0 + 1), T0 + 1).unwrap();
    assert_eq!(e.view(group(2))[0].at, exact);
    let shown = e
        .view(group(1))
        .iter()
        .find(|s| s.user == user(2))
        .unwrap()
        .at;
    assert!(distance_m(shown, cell) < 0.02);
}

#[test]
fn a_paused_member_is_hidden_and_silent_until_resumed() {
    let mut e = setup(&[1, 2]);
    let o = p(-23.55, -46.63);
    e.ingest(user(1), &fix(o, T0), T0).unwrap();
    e.ingest(user(2), &fix(offset(o, 1_000.0, 0.0), T0), T0)
        .unwrap();
    e.pause(user(2));
    assert_eq!(e.view(group(1)).len(), 1, "hidden at once");
    assert_eq!(
        e.ingest(user(2), &fix(o, T0 + 1_000), T0 + 1_000),
        Err(IngestError::Paused)
    );
    for k in 1..5 {
        let t = T0 + k * 1_000;
        e.ingest(user(1), &fix(offset(o, 900.0, 0.0), t), t)
            .unwrap();
    }
    assert_eq!(alerts(&mut e), vec![], "no alerts about a paused member");
    assert_eq!(e.proximity(group(1), user(1), user(2), T0 + 5_000), None);
    e.resume(user(2));
    e.ingest(user(2), &fix(offset(o, 950.0, 0.0), T0 + 6_000), T0 + 6_000)
        .unwrap();
    e.ingest(user(2), &fix(offset(o, 950.0, 0.0), T0 + 7_000), T0 + 7_000)
        .unwrap();
    assert_eq!(alerts(&mut e), vec![near(1, 2)]);
}

#[test]
fn places_announce_arrivals_and_departures_after_the_dwell_and_never_at_seeding() {
    let mut e = setup(&[1, 2]);
    let home = p(59.33, 18.06);
    let school = p(59.34, 18.08);
    e.set_place(
        group(1),
        place(1),
        &Shape::Circle {
            center: home,
            radius_m: 80.0,
        },
        60_000,
        T0,
    )
    .unwrap();
    // A polygon: a 300 m square around the school.
    let corners = [
        (-150.0, -150.0),
        (150.0, -150.0),
        (150.0, 150.0),
        (-150.0, 150.0),
    ];
    e.set_place(
        group(1),
        place(2),
        &Shape::Polygon {
            vertices: corners.iter().map(|&(x, y)| offset(school, x, y)).collect(),
        },
        0,
        T0,
    )
    .unwrap();
    // Ann starts at home: seeded inside, silently.
    e.ingest(user(1), &fix(offset(home, 10.0, 0.0), T0), T0)
        .unwrap();
    assert_eq!(alerts(&mut e), vec![]);
    assert_eq!(e.inside(group(1), user(1)), vec![place(1)]);
    // She leaves: outside for 59 s is not enough, 60 s is.
    let mut t = T0;
    for k in 1..=7 {
        t = T0 + k * 10_000;
        e.ingest(user(1), &fix(offset(home, 400.0, 0.0), t), t)
            .unwrap();
        if k < 7 {
            assert_eq!(alerts(&mut e), vec![], "{k}");
        }
    }
    assert_eq!(
        alerts(&mut e),
        vec![What::Left {
            user: user(1),
            place: place(1)
        }]
    );
    // Into the school square (no dwell): one arrival; standing on its fence changes nothing.
    t += 1_000;
    e.ingest(user(1), &fix(offset(school, 100.0, 100.0), t), t)
        .unwrap();
    assert_eq!(
        alerts(&mut e),
        vec![What::Arrived {
            user: user(1),
            place: place(2)
        }]
    );
    for k in 0..6 {
        t += 1_000;
        let edge = if k % 2 == 0 { 148.0 } else { 160.0 };
        e.ingest(user(1), &fix(offset(school, edge, 0.0), t), t)
            .unwrap();
    }
    assert_eq!(alerts(&mut e), vec![]);
    // The square's corner region outside it but inside its box: a departure.
    t += 1_000;
    e.ingest(user(1), &fix(offset(school, 300.0, 0.0), t), t)
        .unwrap();
    assert_eq!(
        alerts(&mut e),
        vec![What::Left {
            user: user(1),
            place: place(2)
        }]
    );
    // A place added around Bob announces nothing; removing a place drops its state.
    e.ingest(user(2), &fix(school, t), t).unwrap();
    alerts(&mut e);
    e.set_place(
        group(1),
        place(3),
        &Shape::Circle {
            center: school,
            radius_m: 50.0,
        },
        0,
        t,
    )
    .unwrap();
    e.ingest(user(2), &fix(offset(school, 1.0, 0.0), t + 1), t + 1)
        .unwrap();
    assert_eq!(alerts(&mut e), vec![]);
    assert_eq!(e.inside(group(1), user(2)).len(), 2);
    assert!(e.remove_place(group(1), place(3)));
    assert_eq!(e.inside(group(1), user(2)), vec![place(2)]);
    assert!(!e.remove_place(group(1), place(3)));
    // Ann, inside no place now, gets one drawn around her: silent, and leaving it is announced.
    let ann = offset(school, 300.0, 0.0);
    assert_eq!(e.inside(group(1), user(1)), vec![]);
    e.set_place(
        group(1),
        place(4),
        &Shape::Circle {
            center: ann,
            radius_m: 60.0,
        },
        0,
        t,
    )
    .unwrap();
    assert_eq!(e.inside(group(1), user(1)), vec![place(4)]);
    e.ingest(user(1), &fix(offset(ann, 1_000.0, 0.0), t + 2), t + 2)
        .unwrap();
    assert_eq!(
        alerts(&mut e),
        vec![What::Left {
            user: user(1),
            place: place(4)
        }]
    );
}

#[test]
fn a_group_has_room_for_a_bounded_number_of_members() {
    let mut e = engine();
    for m in 0..MAX_GROUP_MEMBERS as u128 {
        e.share(user(m), group(1), forever(Precision::Exact), T0)
            .unwrap();
    }
    assert_eq!(
        e.share(user(10_000), group(1), forever(Precision::Exact), T0),
        Err(ShareError::GroupFull)
    );
    assert_eq!(
        e.footprint().users,
        MAX_GROUP_MEMBERS,
        "the refused user is not kept"
    );
    e.stop_sharing(user(3), group(1));
    e.share(user(10_000), group(1), forever(Precision::Exact), T0)
        .unwrap();
}

#[test]
fn a_user_costs_under_64_bytes_of_hot_state() {
    let mut e = engine();
    let users = 100_000u128;
    for u in 0..users {
        e.share(user(u), group(u / 10), forever(Precision::Exact), T0)
            .unwrap();
        e.ingest(user(u), &fix(p(45.0, 7.0 + u as f64 * 1e-5), T0), T0)
            .unwrap();
    }
    let f = e.footprint();
    assert_eq!(f.users, users as usize);
    let per_user = f.user_bytes as f64 / users as f64;
    assert!(per_user <= 64.0, "{per_user} bytes per user");
    assert_eq!(f.pairs, 10_000 * 45);
}

/// The sharding plan (ARCHITECTURE.md): groups are split between engines by a hash of the
/// group id; a user in groups on two engines sends each fix to both. Two engines must raise
/// exactly the alerts one engine raises.
#[test]
fn two_engines_sharded_by_group_raise_the_alerts_of_one() {
    let shard = |g: GroupId| (g.0.as_u128().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 64) as usize % 2;
    let mut whole = engine();
    let mut shards = [engine(), engine()];
    let groups: Vec<GroupId> = (0..40).map(group).collect();
    // 120 users; each in 1–3 groups.
    let mut memberships: Vec<(u128, GroupId)> = Vec::new();
    for u in 0..120u128 {
        for k in 0..=(u % 3) {
            memberships.push((u, groups[((u * 7 + k * 13) % 40) as usize]));
        }
    }
    assert!((0..2).all(|s| groups.iter().any(|&g| shard(g) == s)));
    for &g in &groups {
        let config = GroupConfig {
            proximity: Some(Rule {
                cooldown_ms: 0,
                ..Rule::new(150.0)
            }),
            lost_after_ms: 30_000,
        };
        whole.configure_group(g, config);
        shards[shard(g)].configure_group(g, config);
        let shape = Shape::Circle {
            center: p(45.0, 7.0),
            radius_m: 300.0,
        };
        whole.set_place(g, place(0), &shape, 5_000, T0).unwrap();
        shards[shard(g)]
            .set_place(g, place(0), &shape, 5_000, T0)
            .unwrap();
    }
    for &(u, g) in &memberships {
        whole
            .share(user(u), g, forever(Precision::Exact), T0)
            .unwrap();
        shards[shard(g)]
            .share(user(u), g, forever(Precision::Exact), T0)
            .unwrap();
    }
    let mut noise = Noise(99);
    let mut next = move || noise.unit();
    let mut pos: Vec<(f64, f64)> = (0..120)
        .map(|_| (next() * 2_000.0 - 1_000.0, next() * 2_000.0 - 1_000.0))
        .collect();
    for step in 0..300 {
        let now = T0 + step * 1_000;
        for (u, at) in pos.iter_mut().enumerate() {
            if next() < 0.3 {
                continue; // not every user sends every second
            }
            at.0 += next() * 60.0 - 30.0;
            at.1 += next() * 60.0 - 30.0;
            let f = fix(offset(p(45.0, 7.0), at.0, at.1), now);
            whole.ingest(user(u as u128), &f, now).unwrap();
            for s in &mut shards {
                match s.ingest(user(u as u128), &f, now) {
                    Ok(()) | Err(IngestError::NotSharing) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        whole.tick(now);
        shards.iter_mut().for_each(|s| s.tick(now));
    }
    let key = |a: &Alert| (a.group, a.at_ms, a.what);
    let mut one = Vec::new();
    whole.take_alerts(&mut one);
    let mut one: Vec<_> = one.iter().map(key).collect();
    let mut two = Vec::new();
    shards.iter_mut().for_each(|s| s.take_alerts(&mut two));
    let mut two: Vec<_> = two.iter().map(key).collect();
    one.sort();
    two.sort();
    assert!(one.len() > 100, "the trace makes alerts: {}", one.len());
    assert!(
        one.iter()
            .any(|(_, _, w)| matches!(w, What::Arrived { .. }))
    );
    assert_eq!(one, two);
}

/// Past `WARM_ABOVE_USERS`, `warm` reads ahead for any mix of users — sharing, unknown, stopped,
/// forgotten, in a removed group — without a panic, and what is ingested after it is what an
/// engine that never warmed ingests.
#[test]
fn reading_ahead_copes_with_any_user_and_changes_nothing() {
    let n = WARM_ABOVE_USERS as u128 + 10;
    let home = p(48.8566, 2.3522);
    let build = || {
        let mut e = engine();
        for k in 0..n {
            let g = group(k / 10);
            e.configure_group(
                g,
                GroupConfig {
                    proximity: Some(Rule {
                        cooldown_ms: 0,
                        ..Rule::new(R)
                    }),
                    lost_after_ms: 60_000,
                },
            );
            e.share(user(k), g, forever(Precision::Exact), T0).unwrap();
        }
        e.ingest(user(1), &fix(home, T0), T0).unwrap();
        e.ingest(user(2), &fix(offset(home, 500.0, 0.0), T0), T0)
            .unwrap();
        e.remove_group(group(3));
        e.stop_sharing(user(45), group(4));
        e.forget(user(55));
        e
    };
    let (mut warmed, mut plain) = (build(), build());
    let users: Vec<UserId> = [1, 2, 31, 45, 55, n + 5, 0].into_iter().map(user).collect();
    // Handles of every kind: current (1, 2, 0), unknown (45, 55, the one never seen), and
    // another user's (31 and 55 get 2's and 1's). The plain twin ingests by id.
    let mut handles: Vec<Handle> = users.iter().map(|&u| warmed.handle(u)).collect();
    handles[2] = warmed.handle(user(2));
    handles[4] = warmed.handle(user(1));
    let mut scratch = Vec::new();
    warmed.warm(
        users.iter().copied().zip(handles.iter().copied()),
        &mut scratch,
    );
    warmed.warm([], &mut scratch);
    let mut results = [Vec::new(), Vec::new()];
    for (twin, (e, out)) in [&mut warmed, &mut plain]
        .into_iter()
        .zip(&mut results)
        .enumerate()
    {
        for t in [1_000, 2_000, 3_000] {
            for (k, &u) in users.iter().enumerate() {
                let at = offset(home, 50.0 * k as f64, 0.0);
                let taken = if twin == 0 {
                    e.ingest_with(&mut handles[k], u, &fix(at, T0 + t), T0 + t)
                } else {
                    e.ingest(u, &fix(at, T0 + t), T0 + t)
                };
                out.push(format!("{taken:?}"));
            }
        }
        out.push(format!("{:?}", alerts(e)));
    }
    assert_eq!(results[0], results[1]);
    // The mix is what it says: taken (1, 2, 0), refused for not sharing (31 in the removed
    // group, 45 stopped, 55 forgotten, one never seen), and 1 and 2, now 50 m apart, near.
    let first_round: Vec<bool> = results[0][..users.len()]
        .iter()
        .map(|r| r.starts_with("Ok"))
        .collect();
    assert_eq!(first_round, [true, true, false, false, false, false, true]);
    assert!(results[0][3].contains("NotSharing"), "{:?}", results[0]);
    assert!(
        results[0].last().unwrap().contains("Near"),
        "{:?}",
        results[0]
    );
}

/// A handle is a shortcut, never a wrong answer: one whose user was forgotten, or whose slot now
/// holds someone else, finds the user by id (or no one) and is refreshed.
#[test]
fn a_stale_handle_finds_the_right_user_or_no_one() {
    let mut e = engine();
    let home = p(48.8566, 2.3522);
    let g = group(1);
    e.configure_group(g, GroupConfig::default());
    for k in [1, 2] {
        e.share(user(k), g, forever(Precision::Exact), T0).unwrap();
    }
    let first = e.handle(user(1));
    assert_ne!(first, Handle::default());
    assert_eq!(e.handle(user(9)), Handle::default(), "unknown");
    let mut h = first;
    e.ingest_with(&mut h, user(1), &fix(home, T0), T0).unwrap();
    // 1 is forgotten: the handle's slot is free (and still names 1).
    e.forget(user(1));
    assert_eq!(
        e.ingest_with(&mut h, user(1), &fix(home, T0 + 1_000), T0 + 1_000),
        Err(IngestError::NotSharing)
    );
    // 2 goes too, and 1 comes back into 2's old slot: the handle on the free slot finds 1 there.
    e.forget(user(2));
    e.share(user(1), g, forever(Precision::Exact), T0).unwrap();
    let mut h = first;
    e.ingest_with(&mut h, user(1), &fix(home, T0 + 2_000), T0 + 2_000)
        .unwrap();
    assert_ne!(h, first, "refreshed");
    assert_eq!(h, e.handle(user(1)));
    // 3 takes 1's first slot: a fix of 1's through the old handle is still 1's, and a fix of 3's
    // through it is 3's.
    e.share(user(3), g, forever(Precision::Exact), T0).unwrap();
    assert_eq!(
        e.handle(user(3)).slot(),
        first.slot(),
        "the slot was reused"
    );
    let mut h = first;
    let there = offset(home, 500.0, 0.0);
    e.ingest_with(&mut h, user(1), &fix(there, T0 + 3_000), T0 + 3_000)
        .unwrap();
    let mut h = e.handle(user(1));
    e.ingest_with(&mut h, user(3), &fix(home, T0 + 3_000), T0 + 3_000)
        .unwrap();
    let mut seen: Vec<(UserId, i64, f64)> = e
        .view(g)
        .iter()
        .map(|s| (s.user, s.taken_ms, (distance_m(s.at, home) / 100.0).round()))
        .collect();
    seen.sort_by_key(|s| s.0);
    assert_eq!(
        seen,
        [(user(1), T0 + 3_000, 5.0), (user(3), T0 + 3_000, 0.0)]
    );
}

#[test]
fn a_handle_outlives_its_slot_s_generations() {
    // A handle tells its slot's users apart by the slot's generation, bumped each time the slot
    // is freed. After 65,535 users through one slot its count would come round to the handle's
    // again: the slot must be retired instead, or a fix through the old handle lands on
    // whoever holds it then.
    let mut e = engine();
    let home = p(48.8566, 2.3522);
    let g = group(1);
    e.configure_group(g, GroupConfig::default());
    e.share(user(1), g, forever(Precision::Exact), T0).unwrap();
    let old = e.handle(user(1));
    e.forget(user(1));
    for k in 0..u128::from(u16::MAX) {
        let passer = user(1_000_000 + k);
        e.share(passer, g, forever(Precision::Exact), T0).unwrap();
        e.forget(passer);
    }
    e.share(user(2), g, forever(Precision::Exact), T0).unwrap();
    e.share(user(1), g, forever(Precision::Exact), T0).unwrap();
    let mut h = old;
    e.ingest_with(&mut h, user(1), &fix(home, T0 + 1_000), T0 + 1_000)
        .unwrap();
    assert_ne!(h.slot(), old.slot(), "the slot was retired");
    let seen: Vec<UserId> = e.view(g).iter().map(|s| s.user).collect();
    assert_eq!(seen, [user(1)], "the fix is 1's, and 2 has none");
}
