//! The door of `/ws`: which origins may open a socket, and how many sockets a node, an
//! address and a user may hold.
//!
//! Origins guard against Cross-Site WebSocket Hijacking: a browser sends the page's
//! origin with every upgrade and attaches the visitor's cookies whatever the origin, so
//! by default an upgrade is accepted only from the server's own origin (the `Origin`'s
//! host equal to `Host`), or from origins matching `--allowed-origins` globs. Requests
//! without `Origin` come from non-browser clients and pass.
//!
//! Limits are per node (each node counts its own sockets): a client that opens
//! thousands of sockets is refused at the upgrade, before a connection costs anything.
//! Behind a proxy the client's address is taken from `X-Forwarded-For`, but only when
//! the peer is one of `--trusted-proxies`: anyone else could write that header.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use parking_lot::Mutex;

use crate::glob::glob_matches;

/// What an operator configures at the door.
#[derive(Debug, Clone, Default)]
pub struct EdgeConfig {
    /// Globs an `Origin` may match (`https://*.example.com`, or `*` for any); empty:
    /// same-origin only.
    pub allowed_origins: Vec<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_connections_per_user: Option<usize>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
}

/// An address block: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A `--trusted-proxies` entry that is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address or block (like 10.0.0.0/8)")]
    NotAnAddress(String),
    #[error("`{text}`: the prefix length must be 0 to {max}")]
    Prefix { text: String, max: u8 },
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress(text.into()))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(CidrError::Prefix {
                        text: text.into(),
                        max,
                    })
                }
            },
        };
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why an upgrade is refused, as the client and the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// The metric label (`wss_connections_refused_total{reason}`).
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, message: String) -> Self {
        metrics::counter!("wss_connections_refused_total", "reason" => reason).increment(1);
        Self {
            status,
            reason,
            message,
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_user: HashMap<Arc<str>, usize>,
}

/// Checks upgrades against the configuration and counts the sockets it let in.
pub struct Gate {
    config: EdgeConfig,
    counts: Mutex<Counts>,
}

/// A socket the gate let in; dropping it gives its place back.
pub struct Admission {
    gate: Arc<Gate>,
    ip: IpAddr,
    user: Option<Arc<str>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
        if let Some(user) = &self.user {
            if let Some(n) = counts.per_user.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    counts.per_user.remove(user);
                }
            }
        }
    }
}

impl Gate {
    pub fn new(config: EdgeConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Same-origin, an allowed origin, or no `Origin` at all.
    pub fn check_origin(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), Refusal> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("").trim();
        let allowed = if self.config.allowed_origins.is_empty() {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            same_origin(origin, host)
        } else {
            self.config
                .allowed_origins
                .iter()
                .any(|pattern| glob_matches(pattern, origin))
        };
        if allowed {
            return Ok(());
        }
        tracing::warn!(origin, %peer, "refused a WebSocket upgrade from a foreign origin (403)");
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "origin",
            format!("origin `{origin}` may not open a socket here"),
        ))
    }

    /// The client's address: the peer's, or (from a trusted proxy) the last address in
    /// `X-Forwarded-For` that is not a trusted proxy itself.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip();
        let trusted = |ip: IpAddr| self.config.trusted_proxies.iter().any(|c| c.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !trusted(*ip))
            .unwrap_or(peer)
    }

    /// Count a new socket against every limit, or say which it exceeds.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        user: Option<&Arc<str>>,
    ) -> Result<Admission, Refusal> {
        let mut counts = self.counts.lock();
        if let Some(max) = self.config.max_connections {
            if counts.total >= max {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "node_full",
                    format!("this node holds its maximum of {max} connections; try another"),
                ));
            }
        }
        if let Some(max) = self.config.max_connections_per_ip {
            if counts.per_ip.get(&ip).copied().unwrap_or(0) >= max {
                tracing::info!(%ip, max, "refused a socket over the per-address limit (429)");
                return Err(Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "per_ip",
                    format!("address {ip} already holds {max} connections to this node"),
                ));
            }
        }
        if let (Some(max), Some(user)) = (self.config.max_connections_per_user, user) {
            if counts.per_user.get(user).copied().unwrap_or(0) >= max {
                tracing::info!(%user, max, "refused a socket over the per-user limit (429)");
                return Err(Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "per_user",
                    format!("user `{user}` already holds {max} connections to this node"),
                ));
            }
        }
        counts.total += 1;
        *counts.per_ip.entry(ip).or_insert(0) += 1;
        if let Some(user) = user {
            *counts.per_user.entry(user.clone()).or_insert(0) += 1;
        }
        Ok(Admission {
            gate: self.clone(),
            ip,
            user: user.cloned(),
        })
    }
}

/// Whether `origin` (`scheme://host[:port]`) names `host` (a `Host` header), default
/// ports aside.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => "",
    };
    let strip = |a: &str| -> String {
        let a = a.trim().trim_end_matches('/').to_ascii_lowercase();
        match a.strip_suffix(default) {
            Some(bare) if !default.is_empty() => bare.to_string(),
            _ => a,
        }
    };
    !host.is_empty() && strip(authority) == strip(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn same_origin_ignores_default_ports_and_case() {
        assert!(same_origin("http://Example.com", "example.com:80"));
        assert!(same_origin("https://a.b:8443", "a.b:8443"));
        assert!(!same_origin("https://a.b:8443", "a.b:443"));
        assert!(!same_origin("https://evil.com", "example.com"));
        assert!(!same_origin("null", "example.com"));
    }

    #[test]
    fn origins_default_to_same_origin_and_globs_widen_it() {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let gate = Gate::new(EdgeConfig::default());
        let own = headers(&[
            ("host", "chat.example.com"),
            ("origin", "https://chat.example.com"),
        ]);
        assert!(gate.check_origin(&own, ip).is_ok());
        let foreign = headers(&[("host", "chat.example.com"), ("origin", "https://evil.com")]);
        assert_eq!(
            gate.check_origin(&foreign, ip).map_err(|r| r.status),
            Err(StatusCode::FORBIDDEN)
        );
        assert!(gate.check_origin(&headers(&[("host", "x")]), ip).is_ok());
        let gate = Gate::new(EdgeConfig {
            allowed_origins: vec!["https://*.example.com".into()],
            ..EdgeConfig::default()
        });
        let sub = headers(&[("host", "api.other"), ("origin", "https://app.example.com")]);
        assert!(gate.check_origin(&sub, ip).is_ok());
        assert!(gate.check_origin(&foreign, ip).is_err());
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let gate = Gate::new(EdgeConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().expect("cidr")],
            ..EdgeConfig::default()
        });
        let xff = headers(&[("x-forwarded-for", "203.0.113.7, 10.1.1.1")]);
        let proxy: SocketAddr = "10.2.2.2:5000".parse().expect("addr");
        let stranger: SocketAddr = "198.51.100.1:5000".parse().expect("addr");
        assert_eq!(gate.client_ip(proxy, &xff).to_string(), "203.0.113.7");
        assert_eq!(gate.client_ip(stranger, &xff).to_string(), "198.51.100.1");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("::1"
            .parse::<Cidr>()
            .expect("v6")
            .contains("::1".parse().expect("ip")));
    }

    #[test]
    fn limits_count_and_give_back() {
        let gate = Gate::new(EdgeConfig {
            max_connections: Some(3),
            max_connections_per_ip: Some(2),
            max_connections_per_user: Some(1),
            ..EdgeConfig::default()
        });
        let (a, b): (IpAddr, IpAddr) = (
            "1.1.1.1".parse().expect("ip"),
            "2.2.2.2".parse().expect("ip"),
        );
        let alice: Arc<str> = Arc::from("alice");
        let first = gate.admit(a, Some(&alice)).expect("first");
        assert_eq!(
            gate.admit(b, Some(&alice))
                .map(|_| ())
                .map_err(|r| r.reason),
            Err("per_user")
        );
        let second = gate.admit(a, None).expect("second");
        assert_eq!(
            gate.admit(a, None).map(|_| ()).map_err(|r| r.reason),
            Err("per_ip")
        );
        let third = gate.admit(b, None).expect("third");
        assert_eq!(
            gate.admit(b, None).map(|_| ()).map_err(|r| r.reason),
            Err("node_full")
        );
        drop((first, second, third));
        assert!(gate.admit(a, Some(&alice)).is_ok());
    }
}
