//! The fault schedule, drawn from the seed: the same seed and duration give the same
//! faults at the same times, so a failed run can be replayed.
//!
//! Faults never overlap: each starts after the previous one ended plus a pause, so the
//! checker can tell which fault a symptom belongs to. The kinds are dealt like cards
//! (every kind once, in a seeded order, then again), so even a 60-second run sees
//! several different ones rather than three of the same.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One fault; `node` is an index into the nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGKILL the node, start it again after `down`.
    Kill { node: usize, down: Duration },
    /// SIGSTOP the node for `pause`, then SIGCONT.
    Stop { node: usize, pause: Duration },
    /// Drop every packet between the node and Redis (both ways, no RST) for `cut`.
    Drop { node: usize, cut: Duration },
    /// SIGKILL Redis (every server of a Redis Cluster) and start it again after `down`,
    /// from its AOF.
    RedisRestart { down: Duration },
    /// `CLUSTER FAILOVER` on a replica (Redis Cluster only).
    Failover,
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Stop { .. } => "stop",
            Fault::Drop { .. } => "drop",
            Fault::RedisRestart { .. } => "redis_restart",
            Fault::Failover => "failover",
        }
    }

    pub fn node(&self) -> Option<usize> {
        match self {
            Fault::Kill { node, .. } | Fault::Stop { node, .. } | Fault::Drop { node, .. } => {
                Some(*node)
            }
            _ => None,
        }
    }

    /// How long the fault itself lasts (its recovery is not included).
    pub fn length(&self) -> Duration {
        match self {
            Fault::Kill { down, .. } => *down,
            Fault::Stop { pause, .. } => *pause,
            Fault::Drop { cut, .. } => *cut,
            Fault::RedisRestart { down } => *down,
            // Waiting for the replica to take over.
            Fault::Failover => Duration::from_secs(5),
        }
    }
}

/// A fault and when it starts, from the start of the load.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
}

/// Load before the first fault: every client connected and joined.
pub const WARMUP: Duration = Duration::from_secs(5);
/// The last fault ends this long before the load stops, so the nodes recover under load.
pub const COOLDOWN: Duration = Duration::from_secs(10);

/// The faults of a run of `duration` with `nodes` nodes.
pub fn schedule(seed: u64, duration: Duration, nodes: usize, redis_cluster: bool) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds: Vec<&str> = vec!["kill", "stop", "drop", "redis_restart"];
    if redis_cluster {
        kinds.push("failover");
    }
    let mut deck: Vec<&str> = Vec::new();
    let mut plan = Vec::new();
    let mut at = WARMUP;
    let mut misses = 0;
    while misses < 8 {
        if deck.is_empty() {
            deck = kinds.clone();
            deck.shuffle(&mut rng);
        }
        let kind = deck.pop().expect("refilled above");
        let node = rng.random_range(0..nodes);
        let fault = match kind {
            "kill" => Fault::Kill {
                node,
                down: Duration::from_millis(rng.random_range(500..3000)),
            },
            "stop" => Fault::Stop {
                node,
                pause: Duration::from_secs(15),
            },
            "drop" => Fault::Drop {
                node,
                cut: Duration::from_secs(20),
            },
            "redis_restart" => Fault::RedisRestart {
                down: Duration::from_secs(rng.random_range(8..13)),
            },
            _ => Fault::Failover,
        };
        if at + fault.length() + COOLDOWN > duration {
            // Does not fit: a shorter kind might.
            misses += 1;
            continue;
        }
        let length = fault.length();
        plan.push(Planned { at, fault });
        // Time to recover (a node restarts, clients resume) before the next one.
        at += length + Duration::from_millis(rng.random_range(4000..9000));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_faults_fit_the_run() {
        let d = Duration::from_secs(600);
        assert_eq!(schedule(7, d, 3, false), schedule(7, d, 3, false));
        assert_ne!(schedule(7, d, 3, false), schedule(8, d, 3, false));
        for seed in 0..50 {
            let plan = schedule(seed, d, 3, true);
            let mut end = Duration::ZERO;
            for p in &plan {
                assert!(p.at >= end, "faults overlap: {plan:?}");
                end = p.at + p.fault.length();
                assert!(p.fault.node().is_none_or(|n| n < 3));
            }
            assert!(end + COOLDOWN <= d);
            assert!(
                plan.len() >= 15,
                "a 10-minute run gets many faults: {}",
                plan.len()
            );
        }
    }

    #[test]
    fn a_minute_sees_several_kinds() {
        for seed in 0..20 {
            let plan = schedule(seed, Duration::from_secs(60), 3, false);
            let mut kinds: Vec<_> = plan.iter().map(|p| p.fault.name()).collect();
            kinds.dedup();
            assert!(kinds.len() >= 2, "seed {seed}: {plan:?}");
        }
    }
}
