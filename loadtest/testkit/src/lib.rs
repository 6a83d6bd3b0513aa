//! What KubeSent's tests, the demo and the campaigns share, and the product never links: local
//! nats-servers ([`nats_server`]), the failing pods, jobs and verdicts every crate's tests build
//! ([`fixtures`]), waiting for the next message on the bus ([`bus`]), and admission webhook servers
//! ([`webhook`]).

pub mod bus;
pub mod fixtures;
pub mod nats_server;
pub mod webhook;

pub use nats_server::{NatsCluster, NatsServer, NatsUsers};
