//! What several end-to-end test files share: the failing workloads they create.

#![allow(dead_code)]

pub use kubesent_testkit::fixtures::oom_pod;
