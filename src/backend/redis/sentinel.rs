//! `redis+sentinel://h1:26379,h2:26379/mymaster`: one Redis whose primary Sentinel
//! chooses, followed across failovers.
//!
//! The redis crate connects to the primary it is given and keeps reconnecting to that
//! address, which after a failover is a replica (writes fail with `READONLY`) or
//! nothing at all. So a task asks the Sentinels for the primary's address every
//! second; when it changes, a new command connection to the new primary replaces the
//! old one for every later call, the Pub/Sub connection is dropped (its task resolves
//! the address again), and the change counts as a recovery, so presence and room
//! streams catch up as after an outage.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use tokio::sync::watch;

use super::{connection_manager, RedisBackend};
use crate::backend::BackendError;

/// How often the Sentinels are asked where the primary is.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The Sentinels of one primary and the connection to the primary they name now.
pub struct SentinelPrimary {
    sentinels: Vec<String>,
    master: String,
    /// `host:port` of the primary the connection goes to.
    address: Mutex<String>,
    manager: ArcSwap<ConnectionManager>,
    /// Bumped at each switch, so the Pub/Sub task reconnects.
    switches: watch::Sender<u64>,
}

/// `(sentinel host:ports, master name)` of a `redis+sentinel://` URL.
pub(super) fn parse(url: &str) -> Option<Result<(Vec<String>, String), BackendError>> {
    let rest = url.strip_prefix("redis+sentinel://")?;
    let parsed = rest.split_once('/').and_then(|(hosts, master)| {
        let master = master.split('?').next().unwrap_or(master).trim_matches('/');
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        (!hosts.is_empty() && !master.is_empty()).then(|| (hosts, master.to_string()))
    });
    Some(parsed.ok_or_else(|| {
        BackendError::Protocol(format!(
            "bad Sentinel URL `{url}`: expected redis+sentinel://host:port[,host:port…]/<master name>"
        ))
    }))
}

impl SentinelPrimary {
    /// Ask the Sentinels for the primary and connect to it.
    pub(super) async fn connect(
        sentinels: Vec<String>,
        master: String,
    ) -> Result<Arc<Self>, BackendError> {
        let address = ask(&sentinels, &master).await?;
        let manager = manager_for(&address).await?;
        tracing::info!(master, %address, "Redis primary named by Sentinel");
        Ok(Arc::new(Self {
            sentinels,
            master,
            address: Mutex::new(address),
            manager: ArcSwap::from_pointee(manager),
            switches: watch::channel(0).0,
        }))
    }

    /// The connection to the current primary (a cheap clone).
    pub fn manager(&self) -> ConnectionManager {
        (**self.manager.load()).clone()
    }

    /// A client for the current primary, for the Pub/Sub connection.
    pub(super) fn client(&self) -> Result<redis::Client, BackendError> {
        let address = self.address.lock().clone();
        redis::Client::open(format!("redis://{address}"))
            .map_err(|e| BackendError::Protocol(format!("bad primary address `{address}`: {e}")))
    }

    /// Changes at every switch of primary.
    pub(super) fn switches(&self) -> watch::Receiver<u64> {
        self.switches.subscribe()
    }

    /// One look at the Sentinels; `true` when the primary changed and was followed.
    async fn follow(&self) -> Result<bool, BackendError> {
        let now = ask(&self.sentinels, &self.master).await?;
        if *self.address.lock() == now {
            return Ok(false);
        }
        let manager = manager_for(&now).await?;
        let before = std::mem::replace(&mut *self.address.lock(), now.clone());
        self.manager.store(Arc::new(manager));
        self.switches.send_modify(|n| *n += 1);
        tracing::warn!(master = %self.master, from = %before, to = %now, "Redis primary switched; following it");
        Ok(true)
    }
}

/// Follow the primary until the backend is gone; each switch is a recovery.
pub(super) async fn follow_task(primary: Arc<SentinelPrimary>, backend: Weak<RedisBackend>) {
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(this) = backend.upgrade() else {
            return;
        };
        match primary.follow().await {
            Ok(true) => this.recoveries.send_modify(|n| *n += 1),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "could not ask the Sentinels for the primary"),
        }
    }
}

/// The primary's `host:port` from the first Sentinel that answers (each bounded), and
/// only if that address says it is a primary: a Sentinel may lag behind a failover.
async fn ask(sentinels: &[String], master: &str) -> Result<String, BackendError> {
    let mut last = String::from("no Sentinel answered");
    for sentinel in sentinels {
        match ask_one(sentinel, master).await {
            Ok(address) => return Ok(address),
            Err(e) => last = format!("{sentinel}: {e}"),
        }
    }
    Err(BackendError::unavailable(format!(
        "could not find the primary `{master}` through Sentinel: {last}"
    )))
}

async fn ask_one(sentinel: &str, master: &str) -> Result<String, BackendError> {
    let client = redis::Client::open(format!("redis://{sentinel}"))
        .map_err(|e| BackendError::Protocol(format!("bad Sentinel address `{sentinel}`: {e}")))?;
    let bounded = |fut| tokio::time::timeout(Duration::from_secs(1), fut);
    let mut conn = bounded(client.get_multiplexed_async_connection())
        .await
        .map_err(|_| BackendError::unavailable("no answer"))?
        .map_err(BackendError::unavailable_because)?;
    let named: Option<(String, u16)> = tokio::time::timeout(
        Duration::from_secs(1),
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async(&mut conn),
    )
    .await
    .map_err(|_| BackendError::unavailable("no answer"))?
    .map_err(BackendError::unavailable_because)?;
    let (host, port) =
        named.ok_or_else(|| BackendError::unavailable(format!("does not know `{master}`")))?;
    let address = format!("{host}:{port}");
    let primary = redis::Client::open(format!("redis://{address}"))
        .map_err(BackendError::unavailable_because)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(1),
        primary.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| BackendError::unavailable(format!("{address} does not answer")))?
    .map_err(BackendError::unavailable_because)?;
    let role: Vec<redis::Value> = tokio::time::timeout(
        Duration::from_secs(1),
        redis::cmd("ROLE").query_async(&mut conn),
    )
    .await
    .map_err(|_| BackendError::unavailable(format!("{address} does not answer")))?
    .map_err(BackendError::unavailable_because)?;
    match role.first() {
        Some(redis::Value::BulkString(r)) if r == b"master" => Ok(address),
        _ => Err(BackendError::unavailable(format!(
            "{address} is not a primary (yet)"
        ))),
    }
}

async fn manager_for(address: &str) -> Result<ConnectionManager, BackendError> {
    let url = format!("redis://{address}");
    let client = redis::Client::open(url.as_str())
        .map_err(|e| BackendError::Protocol(format!("bad primary address `{address}`: {e}")))?;
    connection_manager(&client, &url).await
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sentinel_urls_name_their_sentinels_and_master() {
        let (hosts, master) = parse("redis+sentinel://a:26379, b:26380/mymaster")
            .expect("a sentinel URL")
            .expect("valid");
        assert_eq!(hosts, ["a:26379", "b:26380"]);
        assert_eq!(master, "mymaster");
        assert!(parse("redis://a:6379").is_none());
        assert!(parse("redis+sentinel://a:26379")
            .expect("sentinel")
            .is_err());
        assert!(parse("redis+sentinel:///mymaster")
            .expect("sentinel")
            .is_err());
    }
}
