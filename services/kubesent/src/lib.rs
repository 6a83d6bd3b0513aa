//! The `kubesent` binary's library: subcommand wiring, the demo, and the in-process [`stack::Stack`]
//! that the demo and the end-to-end tests run.

pub mod cli;
pub mod demo;
pub mod diagnose;
pub mod stack;
