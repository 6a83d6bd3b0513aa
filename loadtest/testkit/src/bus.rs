//! Waiting for the next message on a NATS subscription, decoded as a wire type, for as long as a test is
//! patient.

use std::time::Duration;

use futures::StreamExt as _;
use serde::de::DeserializeOwned;

/// How long a test waits for something the pipeline does (on a loaded two-core machine).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The next message on `subscription`, decoded; panics (the test fails) when none comes within
/// [`PATIENCE`] or it does not decode as `T`.
pub async fn next<T: DeserializeOwned>(subscription: &mut async_nats::Subscriber) -> T {
    let message = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .unwrap_or_else(|_| panic!("no message on the subscription within {PATIENCE:?}"))
        .unwrap_or_else(|| panic!("the subscription ended"));
    kubesent_proto::decode(&message.payload)
        .unwrap_or_else(|error| panic!("a message on {} does not decode: {error}", message.subject))
}

/// The next outcome (subscribe to `kubesent.outcomes.>`).
pub async fn next_outcome(outcomes: &mut async_nats::Subscriber) -> kubesent_proto::Outcome {
    next(outcomes).await
}

/// The next verdict (subscribe to `kubesent.verdicts.>`).
pub async fn next_verdict(verdicts: &mut async_nats::Subscriber) -> kubesent_proto::Verdict {
    next(verdicts).await
}
