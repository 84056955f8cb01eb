//! One `redis-server` of a test: no persistence, its own port and directory, killed by
//! PID when dropped; it can be SIGKILLed, paused and restarted on the same port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::binary::signal;
use crate::support::free_port;

/// A `redis-server` of this test: no persistence, its own port and directory.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// More arguments (a Redis Cluster node's).
    extra: Vec<String>,
}

impl RedisServer {
    /// Start on a free port and wait (bounded) until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut last = String::new();
        // A free port can be taken between the check and the bind: try a few.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().expect("a directory for redis-server"),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server (is it installed?): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("poll redis-server") {
                return Err(format!("redis-server on {} exited: {status}", self.port));
            }
            if self.ping() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server on {} never answered PING", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        self.try_conn()
            .is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok())
    }

    /// A connection if the server answers soon, `None` if not (it may be down on purpose).
    pub fn try_conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(conn)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// SIGKILL (no shutdown, no save) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: Redis keeps its data and its sockets but answers nothing, like a
    /// stalled or partitioned server. Its clock (and so key expiry) keeps running.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Start again, empty, on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart needs a stopped redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old socket may linger for a moment.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("redis-server restart on {}: {e}; retrying", self.port);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("could not restart redis-server: {e}"),
            }
        }
    }

    /// A plain connection for inspecting keys (with this test's prefix), bounded.
    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("a Redis URL");
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test's redis-server");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        conn.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        conn
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
