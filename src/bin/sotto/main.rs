//! The sotto command line.

mod devices;

use clap::{Parser, Subcommand};

/// sotto: end-to-end encrypted voice and video calls.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List audio input and output devices with their supported configurations.
    Devices(devices::DevicesArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices(args) => devices::run(args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
