//! `kubesent detector`'s flags and environment, and the configuration they make.

use std::time::Duration;

use clap::Args;
use kubesent_common::{CommonArgs, leader::LeaderArgs, nats::Topology};

use crate::{DEFAULT_INCIDENT_TTL, DetectorConfig, incidents::Holds};

/// `kubesent detector`
#[derive(Debug, Args)]
pub struct DetectorArgs {
    /// Settings every service takes.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Leader election.
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Namespaces to watch (comma-separated); all when empty.
    #[arg(long, env = "KUBESENT_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Namespaces never reported.
    #[arg(
        long,
        env = "KUBESENT_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub excluded_namespaces: Vec<String>,
    /// Milliseconds a workload's incident waits after its first failure so replicas failing with it are
    /// counted in the same job (bare pods are reported at once).
    #[arg(long, env = "KUBESENT_GROUP_WAIT_MS", default_value_t = 2000)]
    pub group_wait_ms: u64,
    /// Seconds a pod may stay unschedulable before it is reported (a cluster autoscaler usually adds a
    /// node within this); one scheduled meanwhile is never reported.
    #[arg(long, env = "KUBESENT_PENDING_THRESHOLD_SECONDS", default_value_t = 120)]
    pub pending_threshold_seconds: u64,
    /// Seconds a scheduled pod's containers may take to start (being created: sandbox, network, volumes,
    /// image pull; or an init container still running) before the pod is reported; one that starts
    /// meanwhile is never reported.
    #[arg(long, env = "KUBESENT_START_THRESHOLD_SECONDS", default_value_t = 300)]
    pub start_threshold_seconds: u64,
    /// Seconds a running container may stay not ready (its readiness probe failing) before it is
    /// reported; one that turns ready meanwhile is never reported.
    #[arg(long, env = "KUBESENT_UNREADY_THRESHOLD_SECONDS", default_value_t = 300)]
    pub unready_threshold_seconds: u64,
    /// How long a revision must serve healthy (every pod it wants ready, none restarting) before it is
    /// recorded known-good, and a rollback to it after its rollout finished may be proposed.
    #[arg(long, env = "KUBESENT_KNOWN_GOOD_AFTER", default_value = "10m", value_parser = kubesent_common::positive_duration)]
    pub known_good_after: Duration,
}

impl DetectorArgs {
    /// The detector's configuration, with the jobs stream sized by `topology`.
    pub fn config(&self, topology: Topology) -> DetectorConfig {
        DetectorConfig {
            namespaces: self.namespaces.clone(),
            excluded_namespaces: self.excluded_namespaces.clone(),
            leader: self.leader.config(&self.common, "kubesent-detector"),
            group_wait: Duration::from_millis(self.group_wait_ms),
            holds: Holds {
                unschedulable: Duration::from_secs(self.pending_threshold_seconds),
                never_started: Duration::from_secs(self.start_threshold_seconds),
                not_ready: Duration::from_secs(self.unready_threshold_seconds),
            },
            incident_ttl: DEFAULT_INCIDENT_TTL,
            topology,
            known_good_after: self.known_good_after,
        }
    }
}
