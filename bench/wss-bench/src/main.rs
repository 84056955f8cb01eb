//! `wss-bench`: the load generator shipped with wss-engine (see BENCHMARKS.md).
//!
//! ```text
//! wss-bench fanout   --url ws://A/ws,ws://B/ws --subscribers 1000 --rooms 1 --publishers 4
//! wss-bench idle     --url ws://A/ws --connections 10000 --pid <server pid> --procs 2
//! wss-bench scripted --url ws://A/ws,ws://B/ws,ws://C/ws --clients 48 --duration 10
//! wss-bench resume   --url ws://A/ws,ws://B/ws --clients 1000 --rooms 100 --messages 100
//! wss-bench storm    --url ws://A/ws,ws://B/ws --kill-pid A --server-pid B --jwt-secret S --clients 19800
//! wss-bench get FILE best.deliveries_per_s ...   (read fields of a result, for scripts)
//! ```
//!
//! Progress goes to stderr; the result is exactly one JSON line on stdout. The exit
//! status is 0 when the harness worked (something was delivered / opened / counted), so
//! a broken setup fails CI, while a step that misses a latency bound is a result.
//!
//! Modules: `conn` (dialing, handshake, both wire protocols), `stats` (counters,
//! sharded hdrhistograms, /proc RSS), one module per mode.

mod conn;
mod fanout;
mod idle;
mod resume;
mod scripted;
mod stats;
mod storm;
mod workers;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use conn::{Protocol, Sources, Target};

#[derive(Debug, Parser)]
#[command(
    name = "wss-bench",
    version,
    about = "Load generator for wss-engine (and Socket.IO, for comparison)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Subscribers in rooms, publishers at stepped offered rates: deliveries/s, loss, latency.
    Fanout(fanout::FanoutArgs),
    /// Hold many idle connections and measure the server's RSS per connection.
    Idle(idle::IdleArgs),
    /// Read-modify-write script events on shared state; checks the final count.
    Scripted(scripted::ScriptedArgs),
    /// Clients in rooms with history drop, miss messages, resume: time, loss, order.
    Resume(resume::ResumeArgs),
    /// Reconnect storm: kill node A, its clients resume on B with backoff (W5).
    Storm(storm::StormArgs),
    /// Print fields of a JSON result file (dot paths, `steps.0.lost`), one per line.
    Get {
        file: std::path::PathBuf,
        paths: Vec<String>,
    },
}

/// Options every load mode shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Node URLs (comma-separated or repeated): `ws://127.0.0.1:3000/ws`; for Socket.IO
    /// `ws://127.0.0.1:3001` (the Engine.IO path is added).
    #[arg(long, value_delimiter = ',', required = true)]
    pub url: Vec<String>,
    #[arg(long, value_enum, default_value = "wss")]
    pub protocol: Protocol,
    /// Runtime worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Spread client sockets over 127.0.0.1 ..= 127.0.0.N (loopback targets only; 0
    /// lets the kernel choose). More addresses, more ephemeral ports.
    #[arg(long, default_value_t = 0)]
    pub source_addrs: u8,
    /// Seconds one connection (dial, upgrade, welcome, join) may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds all connections of the setup may take.
    #[arg(long, default_value_t = 300.0)]
    pub setup_timeout: f64,
}

impl Common {
    pub async fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let mut targets = Vec::with_capacity(self.url.len());
        for url in &self.url {
            targets.push(Target::resolve(url, self.protocol).await?);
        }
        if targets.is_empty() {
            anyhow::bail!("give at least one --url");
        }
        Ok(targets)
    }

    pub fn sources(&self) -> Sources {
        Sources::loopback(self.source_addrs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout.clamp(0.1, 600.0))
    }

    pub fn setup_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.setup_timeout.clamp(1.0, 3600.0))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.mode {
        Mode::Fanout(a) => a.common.threads,
        Mode::Idle(a) => a.common.threads,
        Mode::Scripted(a) => a.common.threads,
        Mode::Resume(a) => a.common.threads,
        Mode::Storm(a) => a.common.threads,
        Mode::Get { file, paths } => return get(file, paths),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.clamp(1, 64))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wss-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.mode {
            Mode::Fanout(a) => fanout::run(a).await,
            Mode::Idle(a) => idle::run(a).await,
            Mode::Scripted(a) => scripted::run(a).await,
            Mode::Resume(a) => resume::run(a).await,
            Mode::Storm(a) => storm::run(a).await,
            Mode::Get { .. } => Ok(Value::Null),
        }
    });
    // Connection tasks that ignore the stop signal must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        // An idle child reported on its own; nothing more to print.
        Ok(Value::Null) => ExitCode::SUCCESS,
        Ok(value) => {
            println!("{value}");
            if value["ok"].as_bool() == Some(true) {
                ExitCode::SUCCESS
            } else {
                eprintln!("wss-bench: the run produced no usable result (\"ok\": false)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("wss-bench: {e:#}");
            println!(
                "{}",
                serde_json::json!({ "ok": false, "error": format!("{e:#}") })
            );
            ExitCode::FAILURE
        }
    }
}

/// `wss-bench get FILE PATH...`: the fields of the last JSON line of FILE.
fn get(file: &std::path::Path, paths: &[String]) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wss-bench get: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(value) = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
    else {
        eprintln!("wss-bench get: {} holds no JSON line", file.display());
        return ExitCode::FAILURE;
    };
    for path in paths {
        let mut v = &value;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            v = match (v, part.parse::<usize>()) {
                (Value::Array(a), Ok(i)) => a.get(i).unwrap_or(&Value::Null),
                (Value::Array(a), Err(_)) if part == "last" => a.last().unwrap_or(&Value::Null),
                _ => v.get(part).unwrap_or(&Value::Null),
            };
        }
        match v {
            Value::String(s) => println!("{s}"),
            other => println!("{other}"),
        }
    }
    ExitCode::SUCCESS
}
