use std::process::ExitCode;

use clap::Parser;
use wss_engine::cli::{Cli, Command};

// Deliveries allocate and free small buffers across worker threads; mimalloc does that
// with less CPU than glibc's malloc (figures in docs/benchmark-history.md, fourth round).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check(args)) => wss_engine::commands::check(&args),
        Some(Command::Test(args)) => wss_engine::commands::test(&args),
        Some(Command::Schema) => wss_engine::commands::schema(),
        Some(Command::Asyncapi(args)) => wss_engine::commands::asyncapi(&args),
        Some(Command::Nodes(args)) => wss_engine::commands::nodes(&args),
        Some(Command::Diff(args)) => wss_engine::commands::diff(&args),
        Some(Command::Serve(args)) => wss_engine::commands::serve(args),
        None => wss_engine::commands::serve(cli.serve),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wss-engine: {}", wss_engine::commands::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
