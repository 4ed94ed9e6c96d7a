//! `loadtest`: the command line of Convoy's load generator.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "loadtest", about = "Convoy's load generator")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Rooms of speakers and listeners against a running media node (REST → WHIP → ICE/DTLS/SRTP).
    Sfu(loadtest::sfu::SfuArgs),
    /// Message send → WebSocket delivery in one group, and sign-ins, against a control plane.
    Api(loadtest::api::ApiArgs),
    /// Fixes in over one WebSocket a user, alerts out, against a location engine (in this
    /// process unless --target), and the same workload against Redis GEO.
    Location(loadtest::location::LocationArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Sfu(args) => loadtest::sfu::run(args),
        Scenario::Api(args) => loadtest::api::run(args),
        Scenario::Location(args) => loadtest::location::run(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
