//! Load-test scenarios. Each starts its own nats-server and simulators, drives load, and returns a
//! report with the figures the README quotes. Run through `kubesent loadtest <scenario>`.

pub mod campaign;
pub mod detector;
pub mod diagnoser;
pub mod hostile;
pub mod processes;
