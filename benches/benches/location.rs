//! The location engine's hot path: one fix in, through the id table, the user's slot, proximity
//! against the other members of each group the user shares with, and the group's places.
//!
//! - `location/fix/N`: N users (10k, 100k, 1M) in groups of 4–20 (uniform), a fifth of them in a
//!   second group too, one or two places per group (about 100k places at 1M users). Groups are
//!   spread over a 60 × 60 km area, members within ~2 km of their group's centre, so pairs and
//!   places do cross their thresholds. Fixes arrive in a random order of users; between two
//!   fixes a user walks (7 m) or drives (60 m, a quarter of users). Throughput counts fixes.
//! - `location/fix_big_groups/N` (10k, 100k, 1M): the same with groups of 4–50 and one to five
//!   places a group (about 110k places at 1M users).
//! - `…_warmed`: each of those as the location server takes fixes — a batch of 32 at a time,
//!   read ahead with `Engine::warm`, each user found through the handle kept for them.
//! - `location/fix_places_in_one_group/100000`: one group of 20 members with 100k places (circles
//!   of 30–150 m over the 60 × 60 km area): every fix goes through that group's places tree.
//! - `location/rstar_move/N`: for comparison, moving one point in an rstar R-tree of N points
//!   (remove + insert) — what keeping a global index of users would add to every fix.
//!
//! Each size prints its memory (bytes per user of slots, ids and id table; pair tracks).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use location_engine::engine::{Config, Engine, GroupConfig, Handle, Precision, Sharing};
use location_engine::fix::Fix;
use location_engine::geo::LatLon;
use location_engine::noise::Noise;
use location_engine::places::Shape;
use protocol::{GroupId, PlaceId, UserId};
use rstar::RTree;
use std::hint::black_box;
use std::time::{Duration, Instant};
use uuid::Uuid;

const T0: i64 = 1_800_000_000_000;

/// Metres → degrees around 48.85° N.
fn at(x_m: f64, y_m: f64) -> LatLon {
    LatLon::new(48.85 + y_m / 111_200.0, 2.35 + x_m / 73_200.0).expect("in range")
}

struct World {
    engine: Engine,
    /// Every user once, in the (shuffled) order their fixes come in; read in that order, so the
    /// harness itself adds no cache misses to the engine's.
    visits: Vec<Visit>,
}

struct Visit {
    user: UserId,
    /// Two positions (metres), alternated so that every fix moves.
    legs: [(f64, f64); 2],
    /// Kept as the hub keeps one per user ([`Engine::ingest_with`]).
    handle: Handle,
}

impl World {
    fn new(engine: Engine, ids: &[UserId], legs: &[[(f64, f64); 2]], order: &[u32]) -> Self {
        let visits = order
            .iter()
            .map(|&u| Visit {
                user: ids[u as usize],
                legs: legs[u as usize],
                handle: engine.handle(ids[u as usize]),
            })
            .collect();
        World { engine, visits }
    }
}

fn world(users: usize, max_group: usize) -> World {
    let mut noise = Noise(0x2545_f491_4f6c_dd1d ^ users as u64);
    let mut engine = Engine::new(Config {
        incarnation: 1,
        seed: 2,
    });
    let ids: Vec<UserId> = (0..users)
        .map(|u| UserId(Uuid::from_u128(0x1000_0000 + u as u128)))
        .collect();
    let mut legs = Vec::with_capacity(users);
    let mut groups: Vec<(GroupId, (f64, f64))> = Vec::new();
    let mut u = 0;
    while u < users {
        let size = (4 + noise.below(max_group - 3)).min(users - u);
        let g = GroupId(Uuid::from_u128(0x2000_0000 + groups.len() as u128));
        let centre = (noise.unit() * 60_000.0, noise.unit() * 60_000.0);
        engine.configure_group(g, GroupConfig::default());
        // One or two places a group of up to 20, up to five for larger ones (~100k at 1M users
        // either way).
        for k in 0..1 + noise.below((max_group / 10).max(2)) {
            let place = PlaceId(Uuid::from_u128(((groups.len() as u128) << 8) | k as u128));
            let shape = Shape::Circle {
                center: at(
                    centre.0 + noise.unit() * 2_000.0 - 1_000.0,
                    centre.1 + noise.unit() * 2_000.0 - 1_000.0,
                ),
                radius_m: 100.0 + noise.unit() * 200.0,
            };
            engine
                .set_place(g, place, &shape, 60_000, T0)
                .expect("valid");
        }
        for _ in 0..size {
            let home = (
                centre.0 + noise.unit() * 4_000.0 - 2_000.0,
                centre.1 + noise.unit() * 4_000.0 - 2_000.0,
            );
            let step = if noise.unit() < 0.25 { 60.0 } else { 7.0 };
            let angle = noise.unit() * std::f64::consts::TAU;
            legs.push([
                home,
                (home.0 + step * angle.cos(), home.1 + step * angle.sin()),
            ]);
            engine
                .share(ids[u], g, forever(), T0)
                .expect("room in the group");
            u += 1;
        }
        groups.push((g, centre));
    }
    // A fifth of users share with a second group too.
    for &id in &ids {
        if noise.unit() < 0.2 {
            let g = groups[noise.below(groups.len())].0;
            let _ = engine.share(id, g, forever(), T0);
        }
    }
    let mut order: Vec<u32> = (0..users as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, noise.below(i + 1));
    }
    // Everyone's first fix, so states are seeded before timing.
    for (u, leg) in legs.iter().enumerate() {
        engine
            .ingest(ids[u], &fix(leg[0], T0), T0)
            .expect("first fix");
    }
    World::new(engine, &ids, &legs, &order)
}

/// One group of 20 members and `places` places over the whole area.
fn places_world(places: usize) -> World {
    let mut noise = Noise(0x9e37_79b9 ^ places as u64);
    let mut engine = Engine::new(Config {
        incarnation: 1,
        seed: 3,
    });
    let g = GroupId(Uuid::from_u128(0x3000_0000));
    engine.configure_group(g, GroupConfig::default());
    for k in 0..places {
        let shape = Shape::Circle {
            center: at(noise.unit() * 60_000.0, noise.unit() * 60_000.0),
            radius_m: 30.0 + noise.unit() * 120.0,
        };
        engine
            .set_place(g, PlaceId(Uuid::from_u128(k as u128)), &shape, 60_000, T0)
            .expect("valid");
    }
    let ids: Vec<UserId> = (0..20)
        .map(|u| UserId(Uuid::from_u128(0x4000_0000 + u as u128)))
        .collect();
    let mut legs = Vec::new();
    for &id in &ids {
        let home = (noise.unit() * 60_000.0, noise.unit() * 60_000.0);
        legs.push([home, (home.0 + 60.0, home.1 - 20.0)]);
        engine.share(id, g, forever(), T0).expect("room");
        engine.ingest(id, &fix(home, T0), T0).expect("first fix");
    }
    let order: Vec<u32> = (0..20).collect();
    World::new(engine, &ids, &legs, &order)
}

fn forever() -> Sharing {
    Sharing {
        precision: Precision::Exact,
        until_ms: i64::MAX,
    }
}

fn fix(m: (f64, f64), taken_ms: i64) -> Fix {
    Fix {
        at: at(m.0, m.1),
        accuracy_m: 8.0,
        altitude_m: None,
        speed_mps: Some(1.4),
        heading_deg: Some(90.0),
        battery: Some(70),
        taken_ms,
    }
}

fn report(name: &str, w: &World) {
    let f = w.engine.footprint();
    eprintln!(
        "{name}: {} users, {} groups, {} memberships, {} places; {:.1} B/user (slots, ids, id table), \
         {:.1} B/membership, {} pairs ({:.1} MB)",
        f.users,
        f.groups,
        f.memberships,
        f.places,
        f.user_bytes as f64 / f.users as f64,
        f.membership_bytes as f64 / f.memberships as f64,
        f.pairs,
        f.pair_bytes as f64 / 1e6,
    );
}

/// The next fix of the walk: (the visit, its fix, now). Every user moves once a pass, in a
/// shuffled order, alternating between the two ends of its leg.
fn next_fix(w: &World, pass: &mut i64, cursor: &mut usize) -> (usize, Fix, i64) {
    let n = w.visits.len();
    if *cursor == n {
        *cursor = 0;
        *pass += 1;
    }
    let v = *cursor;
    *cursor += 1;
    let now = T0 + *pass * 5_000 + (*cursor as i64 * 5_000 / n as i64);
    let leg = w.visits[v].legs[(*pass & 1) as usize];
    (v, fix(leg, now), now)
}

fn run(w: &mut World, iters: u64, pass: &mut i64, cursor: &mut usize) -> Duration {
    let mut alerts = Vec::new();
    let start = Instant::now();
    for _ in 0..iters {
        let (v, f, now) = next_fix(w, pass, cursor);
        let _ = black_box(w.engine.ingest(w.visits[v].user, &f, now));
        if cursor.is_multiple_of(4096) {
            w.engine.take_alerts(&mut alerts);
            alerts.clear();
        }
    }
    let spent = start.elapsed();
    w.engine.take_alerts(&mut alerts);
    spent
}

/// As the location server's hub takes fixes: a batch of 32 at a time with [`Engine::warm`]
/// ahead of each batch, each user found through the handle kept for them.
fn run_warmed(w: &mut World, iters: u64, pass: &mut i64, cursor: &mut usize) -> Duration {
    const BATCH: usize = 32;
    let mut alerts = Vec::new();
    let mut scratch = Vec::new();
    let mut batch: Vec<(usize, Fix, i64)> = Vec::with_capacity(BATCH);
    let mut done = 0u64;
    let start = Instant::now();
    while done < iters {
        batch.clear();
        while batch.len() < BATCH && done + (batch.len() as u64) < iters {
            batch.push(next_fix(w, pass, cursor));
        }
        let visits = &w.visits;
        w.engine.warm(
            batch.iter().map(|b| (visits[b.0].user, visits[b.0].handle)),
            &mut scratch,
        );
        for (v, f, now) in &batch {
            let visit = &mut w.visits[*v];
            let _ = black_box(w.engine.ingest_with(&mut visit.handle, visit.user, f, *now));
        }
        done += batch.len() as u64;
        if done.is_multiple_of(4096) {
            w.engine.take_alerts(&mut alerts);
            alerts.clear();
        }
    }
    let spent = start.elapsed();
    w.engine.take_alerts(&mut alerts);
    spent
}

fn location(c: &mut Criterion) {
    let mut g = c.benchmark_group("location");
    g.throughput(Throughput::Elements(1));
    for (name, users, max_group) in [
        ("fix", 10_000, 20),
        ("fix", 100_000, 20),
        ("fix", 1_000_000, 20),
        ("fix_big_groups", 10_000, 50),
        ("fix_big_groups", 100_000, 50),
        ("fix_big_groups", 1_000_000, 50),
    ] {
        let mut w = world(users, max_group);
        report(&format!("{name}/{users}"), &w);
        let (mut pass, mut cursor) = (1, 0);
        g.bench_with_input(BenchmarkId::new(name, users), &users, |b, _| {
            b.iter_custom(|iters| run(&mut w, iters, &mut pass, &mut cursor))
        });
        let warmed = format!("{name}_warmed");
        g.bench_with_input(BenchmarkId::new(warmed, users), &users, |b, _| {
            b.iter_custom(|iters| run_warmed(&mut w, iters, &mut pass, &mut cursor))
        });
    }
    {
        let places = 100_000;
        let mut w = places_world(places);
        report(&format!("fix_places_in_one_group/{places}"), &w);
        let (mut pass, mut cursor) = (1, 0);
        g.bench_with_input(
            BenchmarkId::new("fix_places_in_one_group", places),
            &places,
            |b, _| b.iter_custom(|iters| run(&mut w, iters, &mut pass, &mut cursor)),
        );
    }
    for users in [100_000usize, 1_000_000] {
        let mut noise = Noise(5);
        let mut points: Vec<[f64; 2]> = (0..users)
            .map(|_| [noise.unit() * 60_000.0, noise.unit() * 60_000.0])
            .collect();
        let mut tree = RTree::bulk_load(points.clone());
        let mut k = 0;
        g.bench_with_input(BenchmarkId::new("rstar_move", users), &users, |b, _| {
            b.iter(|| {
                k = (k + 7_919) % users;
                let old = points[k];
                let new = [old[0] + 7.0, old[1] - 3.0];
                black_box(tree.remove(&old));
                tree.insert(new);
                points[k] = new;
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = location
}
criterion_main!(benches);
