//! NATS JetStream plumbing shared by the services: connecting, creating the streams, consumers and KV
//! bucket idempotently, publishing with a deterministic `Nats-Msg-Id` and trace context, and dead-lettering.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{
        self, Context,
        consumer::{AckPolicy, DeliverPolicy, pull},
        kv,
        message::PublishMessage,
        stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    },
};
use bytes::Bytes;
use kubesent_proto as proto;

use crate::{Error, trace};

/// How the JetStream objects are sized. Every service applies the same values at start.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Stream and KV replicas (3 in production, 1 for a single test server).
    pub replicas: usize,
    /// Bound of [`proto::JOBS_STREAM`]; beyond it publishes are rejected so a flood pushes back.
    pub max_jobs: i64,
    /// Deduplication window of the work queues; must cover a leader failover plus retries.
    pub dedup_window: Duration,
    /// How long the audit log is kept.
    pub outcomes_max_age: Duration,
    /// Time the diagnoser has to ack a job before it is redelivered (progress acks extend it).
    pub diagnoser_ack_wait: Duration,
    /// Deliveries before a job is dead-lettered.
    pub max_deliver: i64,
    /// Redelivery delays after ack timeouts, per delivery.
    pub redelivery_backoff: Vec<Duration>,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_jobs: 100_000,
            dedup_window: Duration::from_secs(15 * 60),
            outcomes_max_age: Duration::from_secs(30 * 24 * 3600),
            diagnoser_ack_wait: Duration::from_secs(60),
            max_deliver: 5,
            redelivery_backoff: vec![
                Duration::from_secs(60),
                Duration::from_secs(120),
                Duration::from_secs(300),
            ],
        }
    }
}

impl Topology {
    /// Stream configurations, by name.
    pub fn streams(&self) -> Vec<stream::Config> {
        let base = |name: &str, subjects: &str| stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            storage: StorageType::File,
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        };
        let work_queue = |name: &str, subjects: &str| stream::Config {
            retention: RetentionPolicy::WorkQueue,
            max_messages: self.max_jobs,
            discard: DiscardPolicy::New,
            duplicate_window: self.dedup_window,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..base(name, subjects)
        };
        let audit_log = |name: &str, subjects: &str| stream::Config {
            retention: RetentionPolicy::Limits,
            max_age: self.outcomes_max_age,
            duplicate_window: self.dedup_window,
            ..base(name, subjects)
        };
        vec![
            work_queue(proto::JOBS_STREAM, proto::JOBS_SUBJECTS),
            work_queue(proto::VERDICTS_STREAM, proto::VERDICTS_SUBJECTS),
            audit_log(proto::OUTCOMES_STREAM, proto::OUTCOMES_SUBJECTS),
            audit_log(proto::DLQ_STREAM, proto::DLQ_SUBJECTS),
        ]
    }

    /// The diagnoser pool's shared durable consumer.
    pub fn diagnosers_consumer(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(proto::DIAGNOSERS_CONSUMER.to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            // NB: with backoff set the server overwrites ack_wait with backoff[0]; keep them equal.
            ack_wait: self.redelivery_backoff.first().copied().unwrap_or(self.diagnoser_ack_wait),
            max_deliver: self.max_deliver,
            backoff: self.redelivery_backoff.clone(),
            max_ack_pending: 256,
            filter_subject: proto::JOBS_SUBJECTS.to_owned(),
            ..Default::default()
        }
    }

    /// The remediator's durable consumer.
    pub fn remediator_consumer(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(proto::REMEDIATOR_CONSUMER.to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(120),
            max_deliver: self.max_deliver,
            max_ack_pending: 64,
            filter_subject: proto::VERDICTS_SUBJECTS.to_owned(),
            ..Default::default()
        }
    }

    /// The intents bucket.
    pub fn intents_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: proto::INTENTS_BUCKET.to_owned(),
            description: "KubeSent remediation intents and per-target locks".to_owned(),
            history: 5,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// Connects to NATS with a connection name that identifies the replica.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, Error> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| Error::Nats(Box::new(e)))
}

/// Creates or updates every stream and the intents bucket. Safe to run from every replica at once.
pub async fn ensure_streams(js: &Context, topology: &Topology) -> Result<(), Error> {
    for config in topology.streams() {
        let name = config.name.clone();
        js.create_or_update_stream(config).await.map_err(|e| Error::Setup(format!("stream {name}: {e}")))?;
    }
    ensure_intents(js, topology).await?;
    Ok(())
}

/// Opens the intents bucket, creating it if needed.
pub async fn ensure_intents(js: &Context, topology: &Topology) -> Result<kv::Store, Error> {
    match js.get_key_value(proto::INTENTS_BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(topology.intents_bucket())
            .await
            .map_err(|e| Error::Setup(format!("bucket {}: {e}", proto::INTENTS_BUCKET))),
    }
}

/// Creates (or opens) a durable pull consumer on `stream`.
pub async fn ensure_consumer(
    js: &Context,
    stream: &str,
    config: pull::Config,
) -> Result<jetstream::consumer::Consumer<pull::Config>, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    let stream = js.get_stream(stream).await.map_err(|e| Error::Setup(format!("stream {stream}: {e}")))?;
    stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|e| Error::Setup(format!("consumer {name}: {e}")))
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Sequence in the stream (the original one for a duplicate).
    pub sequence: u64,
    /// True when JetStream dropped it as a duplicate of the same `Nats-Msg-Id`.
    pub duplicate: bool,
}

/// Publishes `payload` with `Nats-Msg-Id: msg_id`, the current trace context and `extra` headers,
/// and waits for the stream's acknowledgement.
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
    let message = PublishMessage::build().payload(Bytes::from(payload)).headers(headers).message_id(msg_id);
    let ack = js
        .send_publish(subject, message)
        .await
        .map_err(|e| Error::Publish(e.to_string()))?
        .await
        .map_err(|e| Error::Publish(e.to_string()))?;
    Ok(Published { sequence: ack.sequence, duplicate: ack.duplicate })
}

/// A header value with CR/LF replaced, since async-nats panics on them.
pub fn header_value(text: &str) -> async_nats::HeaderValue {
    let clean: String =
        text.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).take(1024).collect();
    async_nats::HeaderValue::from(clean.as_str())
}

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
    let copy = PublishMessage::build().payload(message.payload.clone()).headers(headers);
    js.send_publish(proto::dlq_subject(stage), copy)
        .await
        .map_err(|e| Error::Publish(e.to_string()))?
        .await
        .map_err(|e| Error::Publish(e.to_string()))?;
    message.ack_with(jetstream::AckKind::Term).await.map_err(Error::Nats)?;
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
        backoff.reset();
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                () = shutdown.cancelled() => break 'outer,
            };
            let Some(next) = next else { break };
            match next {
                Ok(message) => {
                    let Some(permit) = permits.pop() else { break };
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        handle(message).await;
                        drop(permit);
                    });
                }
                Err(error) => tracing::warn!(%error, "receiving a message failed"),
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
