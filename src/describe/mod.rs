//! Documents of a loaded pack: what a client may send and receive, told to the people
//! and tools that write clients for it, not used for serving it.
//!
//! ```text
//! asyncapi.rs the AsyncAPI document of a pack (`wss-engine asyncapi`)
//! shapes.rs   what a script emits, replies and delivers, read from its source
//! ```
//!
//! Reads a [`Pack`](crate::config::Pack) as `config` loaded it; `config` does not know
//! this module.

pub mod asyncapi;
mod shapes;
