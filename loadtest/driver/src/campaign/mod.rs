//! The whole-pipeline campaign: the real topology as OS processes (see [`topology`]), scenarios that drive
//! it, and an invariant checker that trusts only the outside world (see [`invariants`]).

pub mod chaos;
pub mod invariants;
pub mod model_bound;
pub mod report;
pub mod storm;
pub mod topology;
pub mod world;
