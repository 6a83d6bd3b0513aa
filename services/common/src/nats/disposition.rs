//! What a consumer does with a message once its handler has run, decided in one place for the
//! diagnosers' and the remediator's pull loops: acknowledge it, hand it back to come again after a
//! delay, or move it to the dead-letter stream with the reason.

use std::time::Duration;

use async_nats::jetstream::{self, Context};

use crate::Error;

/// How a handler ended with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Done: its result is published.
    Done,
    /// Nothing could work on it now (no model can answer): it comes back after the delay, without
    /// counting as a failure.
    Deferred(Duration),
    /// It is not a message the consumer can believe (malformed, out of bounds, wrong subject): the
    /// reason.
    Invalid(String),
    /// Handling it failed (an API or store error): the reason.
    Failed(String),
}

/// What happens to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledge it (double ack: confirmed by the server).
    Ack,
    /// Hand it back, to be delivered again after the delay.
    RetryAfter(Duration),
    /// Move it to the dead-letter stream with the reason, and terminate it.
    DeadLetter(String),
}

/// The shortest hand-back: JetStream redelivers a NAK without delay at once.
const MIN_RETRY: Duration = Duration::from_secs(1);
/// The back-off after a failure doubles per delivery up to 2^8 s (about 4 min).
const MAX_BACKOFF_EXPONENT: u64 = 8;

/// The disposition of a message on its `deliveries`-th delivery (1-based) that ended as `handled`, when
/// `max_deliveries` failed deliveries dead-letter it: a failure is retried after 2^deliveries s (capped
/// at 2^8 s) until its last delivery, then dead-lettered with the reason; an invalid message is
/// dead-lettered at once (retrying cannot make it valid); a deferral is a retry that never dead-letters.
pub fn dispose(handled: Handled, deliveries: u64, max_deliveries: u64) -> Disposition {
    match handled {
        Handled::Done => Disposition::Ack,
        Handled::Deferred(delay) => Disposition::RetryAfter(delay.max(MIN_RETRY)),
        Handled::Invalid(reason) => Disposition::DeadLetter(reason),
        Handled::Failed(reason) if deliveries >= max_deliveries => {
            Disposition::DeadLetter(format!("failed after {deliveries} deliveries: {reason}"))
        }
        Handled::Failed(_) => {
            Disposition::RetryAfter(Duration::from_secs(1 << deliveries.clamp(1, MAX_BACKOFF_EXPONENT)))
        }
    }
}

/// Carries out `disposition` on `message` (`stage` names the dead-letter subject:
/// `kubesent.dlq.<stage>`). A failed ack or NAK leaves the message to the server, which delivers it again
/// after its ack wait; a failed dead-lettering leaves it on its stream.
pub async fn settle(
    js: &Context,
    stage: &str,
    message: &jetstream::Message,
    disposition: &Disposition,
) -> Result<(), Error> {
    match disposition {
        Disposition::Ack => message.double_ack().await.map_err(Error::Nats),
        Disposition::RetryAfter(delay) => {
            message.ack_with(jetstream::AckKind::Nak(Some(*delay))).await.map_err(Error::Nats)
        }
        Disposition::DeadLetter(reason) => super::dead_letter(js, stage, message, reason).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_of_a_handler_has_one_disposition() {
        let failed = || Handled::Failed("kubernetes: 503".into());
        let rows: [(&str, Handled, u64, Disposition); 8] = [
            ("done", Handled::Done, 1, Disposition::Ack),
            ("done on its last delivery", Handled::Done, 5, Disposition::Ack),
            ("a first failure", failed(), 1, Disposition::RetryAfter(Duration::from_secs(2))),
            ("a third failure", failed(), 3, Disposition::RetryAfter(Duration::from_secs(8))),
            (
                "a failure on the last delivery",
                failed(),
                5,
                Disposition::DeadLetter("failed after 5 deliveries: kubernetes: 503".into()),
            ),
            (
                "invalid on its first delivery",
                Handled::Invalid("bad".into()),
                1,
                Disposition::DeadLetter("bad".into()),
            ),
            (
                "deferred, however often",
                Handled::Deferred(Duration::from_secs(30)),
                9,
                Disposition::RetryAfter(Duration::from_secs(30)),
            ),
            (
                "deferred for no time",
                Handled::Deferred(Duration::ZERO),
                1,
                Disposition::RetryAfter(MIN_RETRY),
            ),
        ];
        for (case, handled, deliveries, expected) in rows {
            assert_eq!(dispose(handled, deliveries, 5), expected, "{case}");
        }
    }

    #[test]
    fn the_retry_back_off_doubles_per_delivery_and_stops_growing_at_about_four_minutes() {
        let delays: Vec<u64> = (1..=12)
            .map(|deliveries| match dispose(Handled::Failed("x".into()), deliveries, 100) {
                Disposition::RetryAfter(delay) => delay.as_secs(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 256, 256, 256, 256]);
        assert!(
            matches!(dispose(Handled::Failed("x".into()), 0, 100), Disposition::RetryAfter(d) if d.as_secs() == 2)
        );
    }
}
