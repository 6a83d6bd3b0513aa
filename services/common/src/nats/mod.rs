//! NATS JetStream plumbing shared by the services: connecting ([`connect`]), creating the streams,
//! consumers and KV buckets with retries ([`setup`]), who owns what ([`roles`]), publishing with a
//! deterministic `Nats-Msg-Id` and trace context, pulling, and dead-lettering.

pub mod connect;
pub mod disposition;
pub mod roles;
pub mod setup;

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, Context, consumer::pull, message::PublishMessage},
};
use bytes::Bytes;
use kubesent_proto as proto;

pub use connect::{NatsArgs, connect, connect_as, connect_observed, server_addrs};
pub use roles::Role;
pub use setup::{
    Topology, ensure_consumer, ensure_intents, ensure_streams, existing_bucket, open_bucket, open_consumer,
    open_intents, prepare,
};

use crate::{Error, trace};

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Sequence in the stream (the original one for a duplicate).
    pub sequence: u64,
    /// True when JetStream dropped it as a duplicate of the same `Nats-Msg-Id` stored before this
    /// publish began (a duplicate of this publish's own earlier attempt, whose acknowledgement was lost,
    /// is this publish's message: not a duplicate).
    pub duplicate: bool,
}

/// How long a publish keeps trying through transient failures (no stream leader during an election, a
/// reconnect, a lost acknowledgement): about one JetStream election. Retries reuse the `Nats-Msg-Id`, so
/// a first attempt that was stored after all is deduplicated.
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(20);

/// Publishes `payload` with `Nats-Msg-Id: msg_id`, the current trace context and `extra` headers,
/// and waits for the stream's acknowledgement, retrying transient failures for [`PUBLISH_PATIENCE`].
pub async fn publish(
    js: &Context,
    subject: String,
    msg_id: &str,
    payload: Vec<u8>,
    extra: &[(&str, &str)],
) -> Result<Published, Error> {
    let mut headers = HeaderMap::new();
    trace::inject(&mut headers);
    for (name, value) in extra {
        headers.insert(*name, header_value(value));
    }
    headers.insert("Nats-Msg-Id", header_value(msg_id));
    acknowledged(js, subject, headers, Bytes::from(payload)).await
}

/// Sends one message and waits for its acknowledgement, retrying what a JetStream election or a
/// reconnect causes (no responders, a timed-out or broken request) for [`PUBLISH_PATIENCE`].
async fn acknowledged(
    js: &Context,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<Published, Error> {
    use jetstream::context::PublishErrorKind;
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    let mut backoff = crate::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut retried = false;
    loop {
        let message = PublishMessage::build().payload(payload.clone()).headers(headers.clone());
        let attempt = async { js.send_publish(subject.clone(), message).await?.await }.await;
        match attempt {
            Ok(ack) => return Ok(Published { sequence: ack.sequence, duplicate: ack.duplicate && !retried }),
            Err(error)
                if matches!(
                    error.kind(),
                    PublishErrorKind::StreamNotFound
                        | PublishErrorKind::TimedOut
                        | PublishErrorKind::BrokenPipe
                ) && tokio::time::Instant::now() < deadline =>
            {
                let delay = backoff.next_delay();
                tracing::debug!(%error, %subject, retry_in = ?delay, "publish not acknowledged yet; retrying");
                retried = true;
                tokio::time::sleep(delay).await;
            }
            Err(source) => return Err(Error::Publish { subject, source }),
        }
    }
}

/// Whether a KV write failed only because the key changed (or already exists) since it was read: a
/// compare-and-set conflict to re-read and retry, not a store failure. async-nats 0.51 recognises the
/// server's 10071 but not 10164 (`JSStreamWrongLastSequenceConstantErr`), which 2.11+ servers answer to a
/// KV update whose expected revision is stale (the other clients handle both: nats.py #883, nats.java
/// #1463); the campaign found it, as rate-limit reservations refused under contention on a 3-server
/// cluster.
pub fn is_cas_conflict(error: &(dyn std::error::Error + 'static)) -> bool {
    use jetstream::{
        context::{PublishError, PublishErrorKind},
        kv::{CreateError, CreateErrorKind, UpdateError, UpdateErrorKind},
    };
    let mut next = Some(error);
    while let Some(link) = next {
        let conflict = link
            .downcast_ref::<UpdateError>()
            .is_some_and(|e| e.kind() == UpdateErrorKind::WrongLastRevision)
            || link.downcast_ref::<CreateError>().is_some_and(|e| e.kind() == CreateErrorKind::AlreadyExists)
            || link
                .downcast_ref::<PublishError>()
                .is_some_and(|e| e.kind() == PublishErrorKind::WrongLastSequence)
            || link
                .downcast_ref::<jetstream::Error>()
                .is_some_and(|e| matches!(e.error_code().0, 10071 | 10164));
        if conflict {
            return true;
        }
        next = link.source();
    }
    false
}

pub use crate::headers::header_value;

/// Copies a message to `kubesent.dlq.<stage>` with the reason, then terminates it so it is not
/// redelivered. The copy is acknowledged before the TERM, so nothing is lost between the two.
pub async fn dead_letter(
    js: &Context,
    stage: &str,
    message: &jetstream::Message,
    reason: &str,
) -> Result<(), Error> {
    let info = message.info().map_err(Error::Nats)?;
    let (stream, sequence, deliveries) = (info.stream.to_owned(), info.stream_sequence, info.delivered);
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(proto::headers::DLQ_REASON, header_value(reason));
    headers.insert(proto::headers::DLQ_ORIGINAL_SUBJECT, header_value(message.subject.as_str()));
    headers.insert(proto::headers::DLQ_ORIGINAL_STREAM, header_value(&stream));
    headers.insert(proto::headers::DLQ_ORIGINAL_SEQUENCE, header_value(&sequence.to_string()));
    headers.insert(proto::headers::DLQ_DELIVERIES, header_value(&deliveries.to_string()));
    headers.insert("Nats-Msg-Id", header_value(&format!("dlq-{stream}-{sequence}")));
    acknowledged(js, proto::dlq_subject(stage), headers, message.payload.clone()).await?; // Confirmed by the server, so a service that stops right after cannot lose the TERM in its buffer.
    message.double_ack_with(jetstream::AckKind::Term).await.map_err(Error::Nats)?;
    Ok(())
}

/// How a pull loop fetches.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Messages handled at once.
    pub concurrency: usize,
    /// How long one fetch waits for messages before asking again.
    pub fetch_wait: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self { concurrency: 8, fetch_wait: Duration::from_secs(2) }
    }
}

/// Pulls messages from `consumer` and runs `handle` on each, at most `concurrency` at once. It pulls
/// only as many messages as it has free slots, and only while `gate` is true (leadership, or a usable
/// model), so a paused worker leaves its messages on the server for others. Returns on `shutdown`
/// after the handlers in flight have finished.
pub async fn pull_loop<F, Fut>(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    options: PullOptions,
    mut gate: tokio::sync::watch::Receiver<bool>,
    shutdown: tokio_util::sync::CancellationToken,
    handle: F,
) where
    F: Fn(jetstream::Message) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt as _;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let mut backoff = crate::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    'outer: loop {
        while !*gate.borrow_and_update() {
            tokio::select! {
                changed = gate.changed() => if changed.is_err() { break 'outer },
                () = shutdown.cancelled() => break 'outer,
            }
        }
        // Wait for at least one free slot, then ask for as many messages as there are free slots.
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let batch = consumer.fetch().max_messages(permits.len()).expires(options.fetch_wait).messages().await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "fetching messages failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let failed = loop {
            let next = tokio::select! {
                next = batch.next() => next,
                () = shutdown.cancelled() => break 'outer,
            };
            let Some(next) = next else { break None };
            match next {
                Ok(message) => {
                    let Some(permit) = permits.pop() else { break None };
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        handle(message).await;
                        drop(permit);
                    });
                }
                // A consumer without a leader (a JetStream election, a server restart) answers at once:
                // asking again at once would hammer the cluster while it recovers.
                Err(error) => break Some(error),
            }
        };
        match failed {
            None => backoff.reset(),
            Some(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "receiving messages failed");
                drop(permits);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    // Drain: wait until every handler has returned its slot.
    let _ = slots.acquire_many(options.concurrency.max(1) as u32).await;
}

/// Sends `+WPI` progress acks every `interval` until dropped, so a long handler keeps its message.
pub struct ProgressAcker {
    stop: tokio_util::sync::CancellationToken,
}

impl ProgressAcker {
    /// Starts acking progress on `message`.
    pub fn start(message: &jetstream::Message, interval: Duration) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let (_, acker) = message.clone().split();
        let token = stop.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if acker.ack_with(jetstream::AckKind::Progress).await.is_err() {
                            return;
                        }
                    }
                    () = token.cancelled() => return,
                }
            }
        });
        Self { stop }
    }
}

impl Drop for ProgressAcker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::{
        context::{PublishError, PublishErrorKind},
        kv::{CreateError, CreateErrorKind, UpdateError, UpdateErrorKind},
    };

    use super::*;

    fn api(err_code: u64) -> jetstream::Error {
        serde_json::from_value(
            serde_json::json!({"code": 400, "err_code": err_code, "description": "wrong last sequence"}),
        )
        .expect("an API error")
    }

    #[test]
    fn a_stale_revision_is_a_conflict_whichever_code_the_server_gives_it() {
        for code in [10071, 10164] {
            let publish = PublishError::with_source(PublishErrorKind::Other, api(code));
            let update = UpdateError::with_source(UpdateErrorKind::Other, publish);
            assert!(is_cas_conflict(&update), "{code}");
        }
        assert!(is_cas_conflict(&UpdateError::new(UpdateErrorKind::WrongLastRevision)));
        assert!(is_cas_conflict(&CreateError::new(CreateErrorKind::AlreadyExists)));
    }

    #[test]
    fn other_store_failures_are_not_conflicts() {
        assert!(!is_cas_conflict(&UpdateError::new(UpdateErrorKind::TimedOut)));
        let full = UpdateError::with_source(
            UpdateErrorKind::Other,
            PublishError::with_source(PublishErrorKind::Other, api(10077)),
        );
        assert!(!is_cas_conflict(&full), "a full stream is not a conflict");
    }
}
