//! The `kubesent` binary's library: subcommand wiring, the operator's commands (`incidents`, `tail`,
//! `diagnose`) and the notifier. The product only: the demo, the simulators and the load tests are the
//! developer binary's (`loadtest/dev`).

pub mod cli;
pub mod diagnose;
pub mod incidents;
pub mod notifier;
