//! Counters and latency histograms shared by the connection tasks.
//!
//! Subscribers record into one of a few mutex-guarded histogram shards (picked by
//! subscriber index) rather than a histogram each: a 3-significant-digit histogram up to
//! 60 s is ~200 KB, too much to keep per connection, and a shard lock is almost never
//! contended with a handful of runtime threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

const SHARDS: usize = 16;
/// Latencies are recorded in microseconds, clamped to this (60 s).
const MAX_US: u64 = 60_000_000;

/// Microseconds since the Unix epoch: every generator process on this machine reads the
/// same clock, so a timestamp written by one process is comparable in another.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).expect("a 3-digit auto-resizing histogram is always valid")
    })
}

/// A latency histogram split into shards so concurrent writers rarely meet.
pub struct Latency {
    shards: Vec<Mutex<Option<Histogram<u64>>>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl Latency {
    pub fn record(&self, shard: usize, micros: u64) {
        let mut guard = match self.shards[shard % SHARDS].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let h = guard.get_or_insert_with(new_histogram);
        h.saturating_record(micros.clamp(1, MAX_US));
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let guard = match shard.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(h) = guard.as_ref() {
                let _ = all.add(h);
            }
        }
        all
    }
}

/// p50/p90/p99/p999/max in milliseconds (3 decimals), as the JSON result reports them.
pub fn summary(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
    })
}

/// Everything counted for one offered-rate step.
#[derive(Default)]
pub struct Step {
    pub sent: AtomicU64,
    /// Sum over sent messages of the subscribers in the message's room.
    pub expected: AtomicU64,
    pub received: AtomicU64,
    /// Frames a publisher got back as `$error` (rate limited, invalid, ...).
    pub errors: AtomicU64,
    /// A delivery whose sequence number was not above the last one seen from its
    /// publisher by the same subscriber (duplicate or reordered).
    pub reordered: AtomicU64,
    pub latency: Latency,
}

/// Steps are allocated when first used: a histogram set per step is a few MB.
pub struct Steps {
    steps: Vec<OnceLock<Step>>,
}

impl Steps {
    pub fn new(max: usize) -> Self {
        Self {
            steps: (0..max).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn get(&self, k: usize) -> Option<&Step> {
        self.steps.get(k).map(|s| s.get_or_init(Step::default))
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// `VmRSS` and `VmHWM` of a process in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => anyhow::bail!("/proc/{pid}/status has no VmRSS/VmHWM"),
    }
}

/// CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Kernel clock ticks per second for /proc times (USER_HZ, 100 on Linux in practice).
fn clock_ticks() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge() {
        let l = Latency::default();
        for i in 0..1000u64 {
            l.record(i as usize, i + 1);
        }
        let h = l.merged();
        assert_eq!(h.len(), 1000);
        assert!(h.value_at_quantile(0.5) >= 499 && h.value_at_quantile(0.5) <= 501);
    }

    #[test]
    fn reads_own_cpu() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn reads_own_rss() {
        let (rss, hwm) = rss_kib(std::process::id()).expect("own /proc status");
        assert!(rss > 0 && hwm >= rss);
    }
}
