//! Library-level helpers for the backend suites: a sink that records what it is handed,
//! and a `RedisBackend` connected to a test's own Redis, ready to serve.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wss_engine::backend::redis::RedisBackend;
use wss_engine::backend::{Bus, VersionCheck};
use wss_engine::delivery::{Envelope, Sink};

use super::Redis;

/// A sink that records every envelope it is handed.
#[derive(Default)]
pub struct Recorder {
    seen: Mutex<Vec<Envelope>>,
}

impl Sink for Recorder {
    fn deliver(&self, envelope: &Envelope) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(envelope.clone());
    }
}

impl Recorder {
    pub fn frames(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| String::from_utf8_lossy(&e.frame).to_string())
            .collect()
    }

    pub fn envelopes(&self) -> Vec<Envelope> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait (bounded) until `n` envelopes arrived, then a little longer so a duplicate
    /// in flight would show; returns the frames.
    pub async fn settle(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.frames().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.frames()
    }
}

/// A `RedisBackend` for node `node` on `server`, ready (Pub/Sub subscribed) before it
/// is returned.
pub async fn redis_instance(
    server: &Redis,
    prefix: &str,
    node: &str,
) -> (Arc<RedisBackend>, Arc<Recorder>) {
    let sink = Arc::new(Recorder::default());
    let backend = tokio::time::timeout(
        Duration::from_secs(10),
        RedisBackend::connect(
            &server.url(),
            prefix,
            Arc::from(node),
            sink.clone() as Arc<dyn Sink>,
            VersionCheck::Enforce,
        ),
    )
    .await
    .expect("RedisBackend::connect took more than 10 s")
    .expect("connect the Redis backend");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !backend.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Redis backend never became ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (backend, sink)
}
