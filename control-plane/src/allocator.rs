//! Where a new media session goes (DESIGN.md §4): a pure function of the live node list, the
//! preferred region and a random source, so tests check every rule with a seeded RNG.
//!
//! Rules:
//! - only SERVING nodes take new sessions (DRAINING and SHUTTING_DOWN never do);
//! - if a region is preferred and has a SERVING node, the choice is made among that region only;
//! - the choice is the less stressed of two distinct random nodes ("power of two choices"): close
//!   to least-loaded without sending every concurrent request to the same node;
//! - the answer lists the chosen node first, then the other SERVING nodes as fallbacks: those of
//!   the preferred region first, each group by increasing stress.
//!
//! An existing session stays where it is while its node is alive and not shutting down
//! ([`keeps_sessions`]); DRAINING nodes keep the sessions they have.

use protocol::node::{NodeRecord, NodeState};
use rand::Rng;
use std::cmp::Ordering;

/// The candidates for a new session, best first; empty when no node is SERVING.
pub fn choose<R: Rng + ?Sized>(
    nodes: &[NodeRecord],
    region_hint: Option<&str>,
    rng: &mut R,
) -> Vec<NodeRecord> {
    let serving: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Serving)
        .collect();
    let preferred = |n: &NodeRecord| region_hint.is_some_and(|r| n.region == r);
    let local: Vec<&NodeRecord> = serving.iter().copied().filter(|n| preferred(n)).collect();
    let pool = if local.is_empty() { &serving } else { &local };
    let Some(chosen) = two_choices(pool, rng) else {
        return Vec::new();
    };

    let mut rest: Vec<&NodeRecord> = serving
        .iter()
        .copied()
        .filter(|n| n.id != chosen.id)
        .collect();
    rest.sort_by(|a, b| {
        preferred(b)
            .cmp(&preferred(a))
            .then_with(|| by_stress(a, b))
            .then_with(|| a.id.cmp(&b.id))
    });
    std::iter::once(chosen).chain(rest).cloned().collect()
}

/// Whether a node may keep hosting the sessions it has.
pub fn keeps_sessions(node: &NodeRecord) -> bool {
    node.state != NodeState::ShuttingDown
}

/// The less stressed of two distinct random members of `pool` (the first drawn on a tie).
fn two_choices<'a, R: Rng + ?Sized>(
    pool: &[&'a NodeRecord],
    rng: &mut R,
) -> Option<&'a NodeRecord> {
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        len => {
            let i = rng.gen_range(0..len);
            let mut j = rng.gen_range(0..len - 1);
            if j >= i {
                j += 1;
            }
            let (a, b) = (pool[i], pool[j]);
            Some(if by_stress(b, a) == Ordering::Less {
                b
            } else {
                a
            })
        }
    }
}

/// Orders by stress; a NaN stress (a confused node) counts as fully stressed.
fn by_stress(a: &NodeRecord, b: &NodeRecord) -> Ordering {
    let stress = |n: &NodeRecord| if n.stress.is_nan() { 1.0 } else { n.stress };
    stress(a).total_cmp(&stress(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::NodeId;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn node(id: &str, region: &str, stress: f32, state: NodeState) -> NodeRecord {
        NodeRecord {
            id: NodeId::new(id).unwrap(),
            region: region.into(),
            http_url: format!("http://{id}:8090"),
            udp_ports: vec![40000],
            version: "test".into(),
            cores: 2,
            stress,
            state,
        }
    }

    fn serving(id: &str, region: &str, stress: f32) -> NodeRecord {
        node(id, region, stress, NodeState::Serving)
    }

    fn ids(records: &[NodeRecord]) -> Vec<&str> {
        records.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn no_serving_node_means_no_candidate() {
        let mut rng = StdRng::seed_from_u64(1);
        assert!(choose(&[], None, &mut rng).is_empty());
        let busy = [
            node("a", "eu", 0.1, NodeState::Draining),
            node("b", "eu", 0.1, NodeState::ShuttingDown),
        ];
        assert!(choose(&busy, None, &mut rng).is_empty());
    }

    #[test]
    fn draining_nodes_are_never_candidates() {
        let nodes = [
            node("idle-but-draining", "eu", 0.0, NodeState::Draining),
            serving("busy", "eu", 0.9),
        ];
        for seed in 0..50 {
            let picked = choose(&nodes, None, &mut StdRng::seed_from_u64(seed));
            assert_eq!(ids(&picked), ["busy"]);
        }
    }

    #[test]
    fn of_two_nodes_the_less_stressed_is_always_chosen() {
        let nodes = [serving("hot", "eu", 0.8), serving("cool", "eu", 0.2)];
        for seed in 0..50 {
            let picked = choose(&nodes, None, &mut StdRng::seed_from_u64(seed));
            assert_eq!(ids(&picked), ["cool", "hot"]);
        }
    }

    #[test]
    fn the_most_stressed_node_is_never_chosen_and_the_choice_is_spread() {
        let nodes = [
            serving("a", "eu", 0.1),
            serving("b", "eu", 0.2),
            serving("c", "eu", 0.3),
            serving("d", "eu", 0.9),
        ];
        let mut first = std::collections::HashMap::new();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..400 {
            let picked = choose(&nodes, None, &mut rng);
            assert_eq!(picked.len(), 4);
            *first.entry(picked[0].id.to_string()).or_insert(0) += 1;
        }
        assert!(!first.contains_key("d"));
        // Two-choice over 4 nodes picks a with p=1/2, b with 1/3, c with 1/6.
        assert!(
            first["a"] > first["b"] && first["b"] > first["c"],
            "{first:?}"
        );
    }

    #[test]
    fn fallbacks_follow_the_chosen_node_by_stress() {
        let nodes = [
            serving("a", "eu", 0.5),
            serving("b", "eu", 0.1),
            serving("c", "eu", 0.3),
            node("d", "eu", 0.0, NodeState::Draining),
        ];
        for seed in 0..50 {
            let picked = choose(&nodes, None, &mut StdRng::seed_from_u64(seed));
            let rest: Vec<f32> = picked[1..].iter().map(|n| n.stress).collect();
            assert!(rest.windows(2).all(|w| w[0] <= w[1]), "{rest:?}");
            assert_eq!(picked.len(), 3);
        }
    }

    #[test]
    fn the_preferred_region_wins_when_it_has_a_serving_node() {
        let nodes = [
            serving("us-1", "us", 0.0),
            serving("eu-1", "eu", 0.7),
            serving("eu-2", "eu", 0.6),
            node("ap-1", "ap", 0.0, NodeState::Draining),
        ];
        for seed in 0..50 {
            let picked = choose(&nodes, Some("eu"), &mut StdRng::seed_from_u64(seed));
            assert_eq!(ids(&picked), ["eu-2", "eu-1", "us-1"]);
        }
        // A region whose only node is draining does not count: fall back to everyone.
        let picked = choose(&nodes, Some("ap"), &mut StdRng::seed_from_u64(3));
        assert_eq!(ids(&picked)[0], "us-1");
        let picked = choose(&nodes, Some("nowhere"), &mut StdRng::seed_from_u64(3));
        assert_eq!(picked.len(), 3);
    }

    #[test]
    fn a_nan_stress_counts_as_full() {
        let nodes = [
            serving("confused", "eu", f32::NAN),
            serving("ok", "eu", 0.95),
        ];
        for seed in 0..20 {
            let picked = choose(&nodes, None, &mut StdRng::seed_from_u64(seed));
            assert_eq!(ids(&picked), ["ok", "confused"]);
        }
    }

    #[test]
    fn only_shutting_down_nodes_give_up_their_sessions() {
        assert!(keeps_sessions(&serving("a", "eu", 0.0)));
        assert!(keeps_sessions(&node("a", "eu", 0.0, NodeState::Draining)));
        assert!(!keeps_sessions(&node(
            "a",
            "eu",
            0.0,
            NodeState::ShuttingDown
        )));
    }
}
