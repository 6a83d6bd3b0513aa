//! The pipeline against the simulators: the demo, the load-test scenarios and campaigns, and the
//! topologies they run (in-process: [`stack`]; as processes of the product binary: [`processes`] and
//! [`campaign::topology`]). Each starts its own nats-server and simulators, drives load, and returns a
//! report with the figures the README quotes. Run through `kubesent-dev demo` and `kubesent-dev loadtest
//! <scenario>`; the end-to-end tests use the same topologies.

pub mod campaign;
pub mod demo;
pub mod detector;
pub mod diagnoser;
pub mod gitops;
pub mod hostile;
pub mod processes;
pub mod stack;
