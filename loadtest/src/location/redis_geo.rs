//! The comparison: the same users, groups and movement against Redis GEO, doing per fix what a
//! service built on Redis must do to know who is near: `GEOADD g:{group} lon lat user` and
//! `GEOSEARCH g:{group} FROMMEMBER user BYRADIUS 200 m`. Pipelined (`pipeline` fixes a round
//! trip) over several connections, one pipeline in flight on each, as fast as Redis answers,
//! for a fixed time. Every key is under
//! a prefix of its own run and is deleted at the end.

use super::setup::NEAR_M;
use super::world::World;
use anyhow::Context as _;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What the Redis phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct RedisSide {
    /// The server (credentials removed).
    pub url: String,
    pub connections: usize,
    pub fixes_per_pipeline: usize,
    /// Fixes done (each a GEOADD and a GEOSEARCH).
    pub fixes: u64,
    pub seconds: f64,
    pub fixes_per_second: f64,
    /// Members each GEOSEARCH found within 200 m, the user itself included, on average.
    pub found_per_search: f64,
    /// Redis's own CPU time over wall time while measured (`INFO cpu`), if it said.
    pub redis_busy_ratio: Option<f64>,
    /// This generator's thread, over the same time.
    pub generator_busy_ratio: f64,
    /// Keys deleted afterwards (one per group).
    pub keys_deleted: u64,
}

/// Where fixes come from: the users in turn, each on its own schedule of device time.
struct Fixes {
    world: World,
    next: usize,
    round: i64,
    base_ms: i64,
    period_ms: f64,
}

impl Fixes {
    fn next(&mut self) -> (usize, protocol::location::WireFix) {
        let n = self.world.walkers.len();
        let i = self.next;
        let offset = self.period_ms * (self.round as f64 + i as f64 / n as f64);
        let fix = self.world.walkers[i].fix_at(self.base_ms + offset as i64);
        self.next += 1;
        if self.next == n {
            self.next = 0;
            self.round += 1;
        }
        (i, fix)
    }
}

fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if rest.contains('@') => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://…@{host}")
        }
        _ => url.to_string(),
    }
}

/// Redis's CPU seconds so far (user + system), from `INFO cpu`.
async fn redis_cpu(con: &mut redis::aio::MultiplexedConnection) -> Option<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(con).await.ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_sys:")? + field("used_cpu_user:")?)
}

/// Runs the workload of `world` against Redis at `url` for `duration`; each user's device time
/// advances by `period_ms` a fix, as in the engine phase.
pub async fn run(
    url: &str,
    world: World,
    period_ms: f64,
    duration: Duration,
    connections: usize,
    pipeline: usize,
) -> anyhow::Result<RedisSide> {
    let client = redis::Client::open(url).context("the Redis URL")?;
    let mut control = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {}", redact(url)))?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("convoy-loadtest:{}:g:", &run[..12]);
    let keys: Rc<Vec<String>> = Rc::new(
        world
            .groups
            .iter()
            .map(|g| format!("{prefix}{}", g.id))
            .collect(),
    );
    let members: Rc<Vec<(usize, String)>> = Rc::new(
        world
            .walkers
            .iter()
            .map(|w| (w.group, w.id.to_string()))
            .collect(),
    );
    let fixes = Rc::new(RefCell::new(Fixes {
        world,
        next: 0,
        round: 0,
        base_ms: super::setup::unix_s() as i64 * 1000,
        period_ms,
    }));
    let done = Rc::new(Cell::new(0u64));
    let found = Rc::new(Cell::new(0u64));

    let result = async {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            conns.push(client.get_multiplexed_async_connection().await?);
        }
        let cpu0 = redis_cpu(&mut control).await;
        let own0 = super::setup::thread_cpu();
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::with_capacity(connections);
        for mut con in conns {
            let (keys, members, fixes, done, found) = (
                Rc::clone(&keys),
                Rc::clone(&members),
                Rc::clone(&fixes),
                Rc::clone(&done),
                Rc::clone(&found),
            );
            tasks.push(tokio::task::spawn_local(async move {
                while Instant::now() < deadline {
                    let mut pipe = redis::pipe();
                    {
                        let mut fixes = fixes.borrow_mut();
                        for _ in 0..pipeline {
                            let (i, fix) = fixes.next();
                            let (group, member) = &members[i];
                            let key = &keys[*group];
                            pipe.cmd("GEOADD")
                                .arg(key)
                                .arg(fix.lon)
                                .arg(fix.lat)
                                .arg(member)
                                .ignore();
                            pipe.cmd("GEOSEARCH")
                                .arg(key)
                                .arg("FROMMEMBER")
                                .arg(member)
                                .arg("BYRADIUS")
                                .arg(NEAR_M)
                                .arg("m");
                        }
                    }
                    let answers: Vec<redis::Value> = pipe.query_async(&mut con).await?;
                    let n: usize = answers
                        .iter()
                        .map(|a| match a {
                            redis::Value::Array(v) => v.len(),
                            _ => 0,
                        })
                        .sum();
                    found.set(found.get() + n as u64);
                    done.set(done.get() + pipeline as u64);
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await.context("a Redis task panicked")??;
        }
        let seconds = start.elapsed().as_secs_f64();
        let own = (super::setup::thread_cpu().saturating_sub(own0)).as_secs_f64();
        let cpu1 = redis_cpu(&mut control).await;
        let busy = cpu0.zip(cpu1).map(|(a, b)| (b - a) / seconds);
        anyhow::Ok((seconds, own / seconds, busy))
    }
    .await;

    // Whatever happened, the run's keys go.
    let mut deleted = 0u64;
    for chunk in keys.chunks(512) {
        let n: redis::RedisResult<u64> =
            redis::cmd("DEL").arg(chunk).query_async(&mut control).await;
        deleted += n.with_context(|| format!("deleting the keys under {prefix}"))?;
    }
    let (seconds, generator_busy_ratio, redis_busy_ratio) = result?;
    let fixes = done.get();
    Ok(RedisSide {
        url: redact(url),
        connections,
        fixes_per_pipeline: pipeline,
        fixes,
        seconds,
        fixes_per_second: fixes as f64 / seconds.max(1e-9),
        found_per_search: found.get() as f64 / fixes.max(1) as f64,
        redis_busy_ratio,
        generator_busy_ratio,
        keys_deleted: deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_kept_out_of_the_report() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://…@h:1/0");
    }
}
