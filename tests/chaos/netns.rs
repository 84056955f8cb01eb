//! The network of a chaos run, all of it made here and removed at the end: one network
//! namespace per node, joined to the root namespace by a veth pair, and one address in
//! the root namespace for Redis.
//!
//! ```text
//!  root namespace                                   namespace wsschaos-nI
//!  lo: 10.213.0.2/32 (Redis; removed at the end)
//!  veth wsschI-h: 10.213.I.1/24  <------------->   veth wsschI-n: 10.213.I.2/24
//!                                                   route 10.213.0.2 via 10.213.I.1
//!                                                   wss-engine listens on 10.213.I.2:8000
//! ```
//!
//! A namespace has a route to the Redis address and to its own /24, nothing else, and
//! the root namespace does not forward (`ip_forward` is left alone), so nothing leaves
//! the machine. The harness, in the root namespace, reaches each node at 10.213.I.2 from
//! 10.213.I.1; a node reaches Redis at 10.213.0.2. Cutting a node off Redis is two
//! iptables DROP rules inside its namespace on the Redis address (no RST, no FIN: the
//! node's sockets just stop hearing back), which leaves the harness's own traffic to it
//! (readiness probes, clients) alone.

use std::process::{Command, Stdio};

/// The Redis address, in the root namespace.
pub const REDIS_ADDR: &str = "10.213.0.2";
/// The port every node listens on inside its namespace.
pub const NODE_PORT: u16 = 8000;

/// Run a command, returning its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces and links of one run; removed when dropped.
pub struct Net {
    pub nodes: usize,
}

impl Net {
    pub fn namespace(i: usize) -> String {
        format!("wsschaos-n{}", i + 1)
    }

    /// The address node `i` listens on, inside its namespace.
    pub fn node_ip(i: usize) -> String {
        format!("10.213.{}.2", i + 1)
    }

    fn host_side(i: usize) -> String {
        format!("wssch{}-h", i + 1)
    }

    fn ns_side(i: usize) -> String {
        format!("wssch{}-n", i + 1)
    }

    /// Make the namespaces (after removing any a crashed run left behind).
    pub fn create(nodes: usize) -> Result<Net, String> {
        Self::remove_all(nodes);
        let net = Net { nodes };
        // On the root namespace's loopback (this kernel has no dummy links): local to
        // the root namespace, reached from each namespace through its veth.
        run(
            "ip",
            &["addr", "add", &format!("{REDIS_ADDR}/32"), "dev", "lo"],
        )?;
        for i in 0..nodes {
            let ns = Self::namespace(i);
            let (host, inner) = (Self::host_side(i), Self::ns_side(i));
            let host_ip = format!("10.213.{}.1", i + 1);
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &["link", "add", &host, "type", "veth", "peer", "name", &inner],
            )?;
            run("ip", &["link", "set", &inner, "netns", &ns])?;
            run(
                "ip",
                &["addr", "add", &format!("{host_ip}/24"), "dev", &host],
            )?;
            run("ip", &["link", "set", &host, "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", Self::node_ip(i)),
                    "dev",
                    &inner,
                ],
            )?;
            run("ip", &["-n", &ns, "link", "set", &inner, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "route",
                    "add",
                    &format!("{REDIS_ADDR}/32"),
                    "via",
                    &host_ip,
                ],
            )?;
        }
        Ok(net)
    }

    /// Drop every packet between node `i` and Redis (both directions), or stop doing so.
    pub fn cut(&self, i: usize, on: bool) -> Result<(), String> {
        let ns = Self::namespace(i);
        let op = if on { "-I" } else { "-D" };
        run(
            "ip",
            &[
                "netns", "exec", &ns, "iptables", op, "OUTPUT", "-d", REDIS_ADDR, "-j", "DROP",
            ],
        )?;
        run(
            "ip",
            &[
                "netns", "exec", &ns, "iptables", op, "INPUT", "-s", REDIS_ADDR, "-j", "DROP",
            ],
        )
    }

    /// Remove what [`Net::create`] makes, whatever of it exists (errors ignored).
    pub fn remove_all(nodes: usize) {
        for i in 0..nodes.max(3) {
            // Deleting the namespace deletes its end of the veth, and so the pair.
            let _ = run("ip", &["netns", "del", &Self::namespace(i)]);
            let _ = run("ip", &["link", "del", &Self::host_side(i)]);
        }
        let _ = run(
            "ip",
            &["addr", "del", &format!("{REDIS_ADDR}/32"), "dev", "lo"],
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Self::remove_all(self.nodes);
    }
}

/// Whether the tools a run needs are here (`ip`, `iptables`); the script installs them.
pub fn tools_missing() -> Vec<&'static str> {
    ["ip", "iptables", "redis-server", "redis-cli"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .collect()
}
