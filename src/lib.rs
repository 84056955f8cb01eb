//! wss-engine: a horizontally scalable WebSocket server configured by event packs.
//!
//! How one client message flows through the modules:
//!
//! ```text
//! transport ──frame──► engine ──script──► script (Rhai, blocking pool)
//!    ▲                   │  commit, deliveries
//!    │                   ▼
//! delivery ◄──envelope── backend (memory, or Redis: state + Pub/Sub between nodes)
//! ```
//!
//! - [`config`]: packs (YAML, schemas, targets, diagnostics). No tokio, no network.
//! - [`describe`]: a loaded pack's AsyncAPI document (`wss-engine asyncapi`).
//! - [`diff`]: two loaded packs compared, each change breaking or not (`wss-engine diff`).
//! - [`script`]: the Rhai runtime and the script API, behind a host trait.
//! - [`delivery`]: what a delivery is and the node-local path to sockets (router,
//!   per-connection queues, write windows).
//! - [`ids`]: a connection's id (which names its node) and a session's (a credential).
//! - [`limits`]: the one counter every resource limit reports its trips to.
//! - [`backend`]: one small contract per concern (state, presence, sessions, the bus and
//!   room histories, idempotency keys); memory and Redis implementations.
//! - [`engine`]: dispatch (validate → script → commit → deliver) and transactions.
//! - [`transport`]: the accept loop, `/ws` with one task per socket, HTTP endpoints,
//!   the HTTP API for backends (`/api`: events through the engine's second door, the
//!   directory, disconnects, OpenAPI) and the admin dashboard (`/admin/`).
//! - [`cluster`]: node registry, heartbeats, cleanup after dead nodes; the fleet as the
//!   HTTP API shows it.
//! - [`packtest`]: `wss-engine test`, a pack's `tests:` cases run in-process.
//! - [`server`]: the composition root, built from a `ServerConfig`; above it, [`cli`] (the
//!   parser) and [`commands`] (what each subcommand does; `serve` turns the arguments
//!   into a `ServerConfig`): the command line.
//!
//! Dependencies point one way: `server` → `transport` → `cluster` → `engine` →
//! `config`/`script`/`backend` → `delivery` → `ids` (only the HTTP API of `transport` reads
//! `cluster`, for the node list). `config` and `script` know nothing of sockets or
//! backends; backends know nothing of events. `commands` → `describe`/`diff` → `config`:
//! `config` only loads packs, what is made of a loaded one lives beside it.

pub mod backend;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod describe;
pub mod diff;
pub mod engine;
/// Star globs (`rooms:` patterns, `--allowed-origins`). Public only for the fuzz targets and
/// property tests (`fuzz/`, `tests/properties_*.rs`), which compare it with a reference model.
#[doc(hidden)]
pub mod glob;
pub mod ids;
pub mod limits;
pub mod packtest;
#[cfg(test)]
mod proptest_support;
pub mod script;
pub mod server;
mod suggest;
pub mod transport;
