pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod server;
pub mod transport;
