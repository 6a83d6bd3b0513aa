//! The `kubesent` binary's library: subcommand wiring, and (with the `sim` feature) the demo, the
//! in-process [`stack::Stack`] that the demo and the end-to-end tests run, and the simulators'
//! subcommands.

pub mod cli;
#[cfg(feature = "sim")]
pub mod demo;
pub mod diagnose;
pub mod incidents;
pub mod notifier;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "sim")]
pub mod stack;
