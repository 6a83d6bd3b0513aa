//! The `kubesent` binary's library: subcommand wiring and the in-process [`stack::Stack`] that the demo
//! and the end-to-end tests run.

pub mod stack;
