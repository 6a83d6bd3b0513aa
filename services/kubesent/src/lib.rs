//! The `kubesent` binary's library: subcommand wiring, the operator's commands (`incidents`, `tail`,
//! `diagnose`) and the notifier. The product only: the demo, the simulators and the load tests are the
//! developer binary's (`loadtest/dev`).

pub mod cli;
pub mod diagnose;
pub mod eval;
pub mod incidents;
pub mod mcp;
pub mod notifier;
pub mod policy;
pub mod report;
pub mod slack;

/// Writes a line of the answer to stdout (flushed). A closed pipe (`kubesent incidents | head`) is an
/// error like any other write error, which `main` ends on quietly (see [`closed_pipe`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, $($arg)*).and_then(|()| stdout.flush())
    }};
}

/// [`out!`] without the newline.
#[macro_export]
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        write!(stdout, $($arg)*).and_then(|()| stdout.flush())
    }};
}

/// Whether `error` is the reader of stdout going away (`| head`): the command ends quietly, with success.
pub fn closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
