//! Watching a fixed target until it has been healthy for the verify window, fails again, or times out.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube_runtime::{WatchStreamExt as _, watcher};

use kubesent_proto::OutcomeResult;

use crate::{Remediator, ladder};

/// The longest verify window or timeout honoured (a month).
const LONGEST_WAIT: Duration = Duration::from_secs(30 * 86_400);

impl Remediator {
    /// Waits until `evaluate` says healthy (at once), failing, or the verify timeout passes.
    pub(crate) async fn wait_for(
        &self,
        pods: Api<Pod>,
        config: watcher::Config,
        evaluate: impl Fn(&[Pod]) -> ladder::Progress,
    ) -> Verification {
        Box::pin(self.watch_pods(pods, config, Duration::ZERO, evaluate)).await
    }

    /// Waits until `evaluate` has said healthy for the whole verify window, failing, or the timeout.
    pub(crate) async fn verify(
        &self,
        pods: Api<Pod>,
        config: watcher::Config,
        evaluate: impl Fn(&[Pod]) -> ladder::Progress,
    ) -> Verification {
        Box::pin(self.watch_pods(pods, config, self.config.verify_window, evaluate)).await
    }

    pub(crate) async fn watch_pods(
        &self,
        pods: Api<Pod>,
        config: watcher::Config,
        window: Duration,
        evaluate: impl Fn(&[Pod]) -> ladder::Progress,
    ) -> Verification {
        let mut events = watcher(pods, config).default_backoff().boxed();
        let mut current: BTreeMap<String, Pod> = BTreeMap::new();
        let mut listed = false;
        // Configured durations are bounded so that no setting can overflow the clock.
        let timeout = self.config.verify_timeout.min(LONGEST_WAIT);
        let window = window.min(LONGEST_WAIT);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut healthy_since: Option<tokio::time::Instant> = None;
        loop {
            let healed_at = healthy_since.map(|t| t + window);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Verification::TimedOut(timeout),
                () = async { match healed_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => return Verification::Healed,
                event = events.next() => {
                    let event = match event {
                        Some(Ok(event)) => event,
                        // The watcher retries with back-off; an error is a pause, not a verdict.
                        Some(Err(_)) => continue,
                        None => return Verification::Failed("the watch of the target ended".into()),
                    };
                    match event {
                        watcher::Event::Init => current.clear(),
                        watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                            current.insert(pod.metadata.name.clone().unwrap_or_default(), pod);
                        }
                        watcher::Event::Delete(pod) => {
                            current.remove(pod.metadata.name.as_deref().unwrap_or_default());
                        }
                        watcher::Event::InitDone => listed = true,
                    }
                    if !listed {
                        continue;
                    }
                    let pods: Vec<Pod> = current.values().cloned().collect();
                    match evaluate(&pods) {
                        ladder::Progress::Failing(why) => return Verification::Failed(why),
                        ladder::Progress::NotLanded(why) => return Verification::NotLanded(why),
                        ladder::Progress::Worse(why) => return Verification::Worse(why),
                        ladder::Progress::Healthy => {
                            let since = *healthy_since.get_or_insert_with(tokio::time::Instant::now);
                            if window.is_zero() && since <= tokio::time::Instant::now() {
                                return Verification::Healed;
                            }
                        }
                        ladder::Progress::Waiting => healthy_since = None,
                    }
                }
            }
        }
    }
}

/// How a verification ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verification {
    Healed,
    Failed(String),
    TimedOut(Duration),
    NotLanded(String),
    Worse(String),
}

impl Verification {
    /// The outcome and its sentence, for `what` (`the replacement`, `pod web-1`, …).
    pub(crate) fn describe(&self, what: &str, window: Duration) -> (OutcomeResult, String) {
        match self {
            Self::Healed => (OutcomeResult::Healed, format!("{what} ran healthy for {window:?}")),
            Self::Failed(why) => (OutcomeResult::Ineffective, format!("{what} failed again: {why}")),
            Self::TimedOut(timeout) => {
                (OutcomeResult::Ineffective, format!("{what} did not stay healthy within {timeout:?}"))
            }
            Self::NotLanded(why) => (OutcomeResult::NotLanded, format!("{what} did not land: {why}")),
            Self::Worse(why) => (OutcomeResult::Reverted, format!("{what} made things worse: {why}")),
        }
    }
}
