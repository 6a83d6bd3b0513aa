//! `kubesent`: the product, one binary for every KubeSent role (`detector`, `diagnoser`, `remediator`,
//! `notifier`) and the operator's commands (`incidents`, `tail`, `diagnose`, `undo`, `approve`, …).

use std::process::ExitCode;

use clap::Parser as _;

/// Stack of each runtime thread: a remediation nests a watch inside the verdict handler inside the pull
/// loop, which in debug builds needs more than the default 2 MiB.
const THREAD_STACK: usize = 8 << 20;

fn main() -> ExitCode {
    kubesent_common::install_crypto_provider();
    let cli = kubesent::cli::Cli::parse();
    let mut builder = if cli.single_threaded() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().thread_stack_size(THREAD_STACK).build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kubesent: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): what it wanted was written.
        Err(error) if kubesent::closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kubesent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
