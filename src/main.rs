//! The `hubsync` binary: parses the command line, sets up logging, calls the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = hubsync::cli::Cli::parse();
    // The demo prints its own story; only warnings (the dead-lettered sample event) join it.
    let default = match cli.command {
        #[cfg(feature = "simulator")]
        hubsync::cli::Command::Demo { .. } => "warn",
        _ => "info",
    };
    hubsync::telemetry::init(default);
    hubsync::cli::main_with(cli).await
}
