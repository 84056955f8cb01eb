//! The nodes' side of the verdict: `/readyz` against the fault windows, and every
//! start, exit and RSS sample of the node processes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{s, t, Limits, Verdict};

/// `(start, end)` of each fault, with its node (`None`: every node).
fn fault_windows(events: &[Value]) -> Vec<(String, Option<String>, u64, u64)> {
    let end_of_run = events.iter().map(t).max().unwrap_or(0);
    let mut open: Vec<(String, Option<String>, u64)> = Vec::new();
    let mut windows = Vec::new();
    for e in events.iter().filter(|e| e["kind"] == "fault") {
        let fault = s(&e["fault"]).to_string();
        let node = e["node"].as_str().map(str::to_string);
        if e["phase"] == "start" {
            open.push((fault, node, t(e)));
        } else if let Some(i) = open.iter().position(|o| o.0 == fault && o.1 == node) {
            let (fault, node, start) = open.remove(i);
            windows.push((fault, node, start, t(e)));
        }
    }
    windows.extend(
        open.into_iter()
            .map(|(f, n, start)| (f, n, start, end_of_run)),
    );
    windows
}

pub(super) fn check_readiness(events: &[Value], limits: &Limits, v: &mut Verdict) {
    let samples: Vec<(&str, u64, u64, Option<u64>)> = events
        .iter()
        .filter(|e| e["kind"] == "readyz")
        .map(|e| {
            (
                s(&e["node"]),
                e["sent"].as_u64().unwrap_or(t(e)),
                t(e),
                e["status"].as_u64(),
            )
        })
        .collect();
    let nodes: BTreeSet<&str> = samples.iter().map(|x| x.0).collect();
    for (fault, node, start, end) in fault_windows(events) {
        let detect = match fault.as_str() {
            "drop" => limits.drop_detect_ms,
            "redis_restart" => limits.redis_detect_ms,
            _ => u64::MAX,
        };
        if detect != u64::MAX {
            let from = start + detect;
            for target in nodes
                .iter()
                .filter(|n| node.as_deref().is_none_or(|x| x == **n))
            {
                let bad: Vec<u64> = samples
                    .iter()
                    .filter(|x| x.0 == *target && x.3 == Some(200) && x.1 >= from && x.2 <= end)
                    .map(|x| x.1)
                    .collect();
                // How long the node took to say so (the figure the delay is set by).
                let noticed = samples
                    .iter()
                    .find(|x| x.0 == *target && x.1 >= start && x.3 != Some(200))
                    .map(|x| x.2.saturating_sub(start));
                if let Some(ms) = noticed {
                    let key = format!("readyz.noticed_ms_max.{fault}");
                    let max = v.stats.entry(key).or_default();
                    *max = (*max).max(ms);
                }
                if let Some(first) = bad.first() {
                    v.fail(format!(
                        "{target}: /readyz 200 at {first} ms ({} samples) during {fault} {start}..{end} ms, past the {detect} ms detection delay",
                        bad.len()
                    ));
                }
            }
        }
        // Every node serves again, by itself, within the recovery bound.
        for target in &nodes {
            let back = samples
                .iter()
                .find(|x| x.0 == *target && x.1 >= end && x.3 == Some(200))
                .map(|x| x.2);
            let last_sample = samples
                .iter()
                .filter(|x| x.0 == *target)
                .map(|x| x.2)
                .max()
                .unwrap_or(0);
            if let Some(at) = back {
                let max = v
                    .stats
                    .entry(format!("readyz.ready_again_ms_max.{fault}"))
                    .or_default();
                *max = (*max).max(at - end);
            }
            match back {
                Some(at) if at - end <= limits.recover_ms => {}
                Some(at) => v.fail(format!(
                    "{target}: ready again {} ms after {fault} ended at {end} ms (bound {} ms)",
                    at - end,
                    limits.recover_ms
                )),
                None if last_sample > end + limits.recover_ms => v.fail(format!(
                    "{target}: never ready again after {fault} ended at {end} ms"
                )),
                None => {}
            }
        }
    }
}

pub(super) fn check_processes(events: &[Value], limits: &Limits, v: &mut Verdict) {
    let mut killed: BTreeSet<String> = BTreeSet::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut rss: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events {
        let node = s(&e["node"]).to_string();
        match s(&e["kind"]) {
            "fault" if e["fault"] == "kill" && e["phase"] == "start" => {
                killed.insert(node);
            }
            "node_start" => {
                let first = started.insert(node.clone());
                let reason = s(&e["reason"]);
                if !(first && reason == "initial" || killed.remove(&node)) {
                    v.fail(format!(
                        "{node}: started again at {} ms ({reason}) without a kill fault",
                        t(e)
                    ));
                }
            }
            "node_exit" => v.fail(format!(
                "{node}: exited by itself at {} ms (pid {}, {})",
                t(e),
                e["pid"],
                s(&e["status"])
            )),
            "final_ready" if e["ready"] != true => {
                v.fail(format!("{node}: not ready at the end of the run"))
            }
            "rss" => {
                let kb = e["kb"].as_u64().unwrap_or(0);
                let max = rss.entry(s(&e["node"])).or_default();
                *max = (*max).max(kb);
            }
            _ => {}
        }
    }
    for (node, kb) in rss {
        v.bump(&format!("rss_max_kb.{node}"), kb);
        if kb > limits.rss_bound_kb {
            v.fail(format!(
                "{node}: RSS reached {kb} KiB, above the {} KiB bound",
                limits.rss_bound_kb
            ));
        }
    }
}
