//! `kubesent`: one binary for every KubeSent role (`detector`, `diagnoser`, `remediator`, `demo`, and
//! the simulators).

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    kubesent_common::install_crypto_provider();
    let cli = kubesent::cli::Cli::parse();
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kubesent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
