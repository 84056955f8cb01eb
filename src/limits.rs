//! Every resource a peer can make a node hold has a limit, a clear error when it trips,
//! and a count of the trips: `wss_limit_hits_total{limit}`, one label value per limit.
//!
//! Limits that predate this counter keep their own metrics as well
//! (`wss_connections_refused_total{reason}`, `wss_http_heads_refused_total`,
//! `wss_slow_consumers_total`); each new limit reports here, under a fixed name that
//! the docs list, so no label value comes from what a client sends.

/// Count one trip of `limit` (a fixed, documented name such as `rooms_per_conn`).
pub fn hit(limit: &'static str) {
    metrics::counter!("wss_limit_hits_total", "limit" => limit).increment(1);
}
