//! `kubesent-dev`: the developers' binary (the demo, the simulators, load tests and campaigns), apart from
//! the product binary `kubesent`, whose processes it runs.

use std::process::ExitCode;

use clap::Parser as _;

mod cli;

/// Stack of each runtime thread: the campaigns nest deep futures (debug builds need more than 2 MiB).
const THREAD_STACK: usize = 8 << 20;

fn main() -> ExitCode {
    kubesent_common::install_crypto_provider();
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kubesent-dev: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kubesent-dev: {error:#}");
            ExitCode::FAILURE
        }
    }
}
