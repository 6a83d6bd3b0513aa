//! JetStream set-up: the streams, consumers and KV buckets, sized by a [`Topology`], created by the role
//! that owns them and waited for by the roles that consume them.
//!
//! Set-up never gives up on a JetStream that is not ready yet (no meta leader, a stream leader being
//! elected, a replicated stream still being placed, a stream another role creates): it retries with
//! back-off and logs each attempt, so a fresh install or a cluster-wide restart does not crash-loop. A
//! configuration conflict (an existing stream with other settings) is an immediate error, since waiting
//! cannot fix it.

use std::{future::Future, time::Duration};

use async_nats::jetstream::{
    self, Context,
    consumer::{AckPolicy, DeliverPolicy, pull},
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use kubesent_proto as proto;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::roles::Role;
use crate::{Backoff, Error};

/// Any error JetStream set-up meets.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
        // Consumers refuse payloads over `MAX_PAYLOAD_BYTES`; the streams refuse them (with headers) first.
        let max_message_size =
            i32::try_from(proto::validate::MAX_PAYLOAD_BYTES + 8 * 1024).unwrap_or(i32::MAX);
        let base = |name: &str, subjects: &str| stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            storage: StorageType::File,
            num_replicas: self.replicas,
            allow_direct: true,
            max_message_size,
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
            stream::Config {
                subjects: vec![proto::OUTCOMES_SUBJECTS.to_owned(), proto::POLICY_SUBJECTS.to_owned()],
                ..audit_log(proto::OUTCOMES_STREAM, proto::OUTCOMES_SUBJECTS)
            },
            // A dead letter is a refused message plus the reason: room for one over the limit.
            stream::Config {
                max_message_size: max_message_size * 2,
                ..audit_log(proto::DLQ_STREAM, proto::DLQ_SUBJECTS)
            },
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
            // Three of the handler's progress acks (every 5 s). A verdict is held only while it is planned
            // and its change made (verifying goes on apart), so one delivered to a leader that then
            // stalled or crashed comes back within 15 s.
            ack_wait: Duration::from_secs(15),
            // Unlimited here: a verdict handed back because its leader stopped leading is delivered
            // again, and the remediator itself dead-letters one that failed on its `4 × max_deliver`th
            // delivery (times four: hand-overs count). A server-side limit would drop a verdict
            // silently when its last delivery fell on a leadership change.
            max_deliver: -1,
            max_ack_pending: 64,
            filter_subject: proto::VERDICTS_SUBJECTS.to_owned(),
            ..Default::default()
        }
    }

    /// The remediator's consumer of the reversals operators record (`kubesent undo`), which count against
    /// their class's record. New reversals only: one made before the consumer existed was not counted then
    /// either.
    pub fn reverts_consumer(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(proto::REVERTS_CONSUMER.to_owned()),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            filter_subject: proto::REVERTED_SUBJECTS.to_owned(),
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

impl Topology {
    /// The bucket of revisions that served healthy: one bounded record per workload (its newest
    /// [`proto::served::MAX_SERVED_PER_WORKLOAD`] known-good revisions), so no history beyond the latest.
    pub fn revisions_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: proto::served::REVISIONS_BUCKET.to_owned(),
            description: "KubeSent: revisions each workload served healthy (written by the detector)"
                .to_owned(),
            history: 1,
            max_value_size: i32::try_from(proto::served::MAX_SERVED_BYTES).unwrap_or(i32::MAX),
            // 100,000 workloads of 10 revisions each at ~2 KB a record fit with room to spare.
            max_bytes: 512 * 1024 * 1024,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// Creates or updates the streams and buckets `role` owns, retrying until JetStream can take them.
pub async fn prepare(
    js: &Context,
    topology: &Topology,
    role: Role,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let quick = setup_context(js);
    for config in topology.streams().into_iter().filter(|c| role.owns_stream(&c.name)) {
        let name = config.name.clone();
        retry(&format!("stream {name}"), shutdown, || quick.create_or_update_stream(config.clone())).await?;
    }
    if role.owns_stream(&format!("KV_{}", proto::INTENTS_BUCKET)) {
        open_intents(js, topology, shutdown).await?;
    }
    if role.owns_stream(&format!("KV_{}", proto::served::REVISIONS_BUCKET)) {
        open_bucket(js, topology.revisions_bucket(), shutdown).await?;
    }
    Ok(())
}

/// How long one set-up request may wait for JetStream's answer. A cluster still electing its meta leader
/// answers nothing: the client's default (10 s) would idle through two or three elections before the
/// retry. Set-up requests are idempotent and retried, so a short wait loses nothing; the handles a
/// service keeps are opened with its own context, not this one.
const SETUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// `js` with the set-up request timeout.
fn setup_context(js: &Context) -> Context {
    let mut quick = js.clone();
    quick.set_timeout(SETUP_REQUEST_TIMEOUT);
    quick
}

/// Creates or updates every stream and the intents bucket (tests, the in-process stack and load tests,
/// which play every role). Safe to run from every replica at once.
pub async fn ensure_streams(js: &Context, topology: &Topology) -> Result<(), Error> {
    let never = CancellationToken::new();
    for role in [Role::Detector, Role::Diagnoser, Role::Remediator] {
        prepare(js, topology, role, &never).await?;
    }
    Ok(())
}

/// Opens the intents bucket, creating it if needed.
pub async fn ensure_intents(js: &Context, topology: &Topology) -> Result<kv::Store, Error> {
    open_intents(js, topology, &CancellationToken::new()).await
}

/// Opens the intents bucket, creating it if needed, retrying until JetStream can.
pub async fn open_intents(
    js: &Context,
    topology: &Topology,
    shutdown: &CancellationToken,
) -> Result<kv::Store, Error> {
    open_bucket(js, topology.intents_bucket(), shutdown).await?;
    // Intents are read back right after they are written, by whichever replica leads next, so reads
    // must come from the stream's leader. A KV answers gets directly by default, from any replica, and a
    // replica that lags behind (one just restarted) would hide a fresh intent from a remediator taking
    // over. Turning that off makes every get go through the leader.
    let stream_name = format!("KV_{}", proto::INTENTS_BUCKET);
    let quick = setup_context(js);
    retry("consistent reads of the intents bucket", shutdown, || async {
        let mut stream = quick.get_stream(&stream_name).await.map_err(BoxError::from)?;
        let info = stream.info().await.map_err(BoxError::from)?;
        if info.config.allow_direct {
            let config = stream::Config { allow_direct: false, ..info.config.clone() };
            quick.update_stream(config).await.map_err(BoxError::from)?;
        }
        js.get_key_value(proto::INTENTS_BUCKET).await.map_err(BoxError::from)
    })
    .await
}

/// Opens the KV bucket `config` describes, creating it if needed, retrying until JetStream can.
pub async fn open_bucket(
    js: &Context,
    config: kv::Config,
    shutdown: &CancellationToken,
) -> Result<kv::Store, Error> {
    let name = config.bucket.clone();
    let quick = setup_context(js);
    retry(&format!("bucket {name}"), shutdown, || async {
        // Created only when JetStream says it does not exist: after a get that timed out, a create
        // would race the replica that made it (and whose settings, e.g. direct gets off, now differ).
        if let Err(error) = quick.get_key_value(&name).await {
            if !stream_not_found(&error) {
                return Err(BoxError::from(error));
            }
            match quick.create_key_value(config.clone()).await {
                Ok(_) => {}
                // Another replica created it meanwhile: read it as it is.
                Err(error) if api_error(&error).is_some_and(|api| api.error_code().0 == 10058) => {}
                Err(error) => return Err(BoxError::from(error)),
            }
        }
        js.get_key_value(&name).await.map_err(BoxError::from)
    })
    .await
}

/// Opens an existing KV bucket without creating it (operator commands: creating it would pick a replica
/// count the services did not choose).
pub async fn existing_bucket(js: &Context, name: &str) -> Result<kv::Store, Error> {
    js.get_key_value(name).await.map_err(|source| Error::MissingBucket { bucket: name.to_owned(), source })
}

/// Creates (or opens) a durable pull consumer on `stream`, waiting for the stream to exist.
pub async fn ensure_consumer(
    js: &Context,
    stream: &str,
    config: pull::Config,
) -> Result<jetstream::consumer::Consumer<pull::Config>, Error> {
    open_consumer(js, stream, config, &CancellationToken::new()).await
}

/// Creates (or opens) a durable pull consumer on `stream`, retrying until the stream exists (another role
/// may create it) and JetStream can place the consumer.
pub async fn open_consumer(
    js: &Context,
    stream: &str,
    config: pull::Config,
    shutdown: &CancellationToken,
) -> Result<jetstream::consumer::Consumer<pull::Config>, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    let quick = setup_context(js);
    retry(&format!("consumer {name} on stream {stream}"), shutdown, || async {
        let created = quick.get_stream(stream).await.map_err(BoxError::from)?;
        created.get_or_create_consumer(&name, config.clone()).await.map_err(BoxError::from)?;
        js.get_stream(stream).await.map_err(BoxError::from)?.get_consumer(&name).await
    })
    .await
}

/// Runs `attempt` until it succeeds, backing off between attempts (0.25 s doubling to 10 s) and logging
/// each failure. Errors that waiting cannot fix (a stream or consumer that exists with other settings,
/// an invalid configuration) end it at once, as does `shutdown`.
pub async fn retry<T, E, F, Fut>(what: &str, shutdown: &CancellationToken, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    for number in 1u32.. {
        let error: BoxError = match attempt().await {
            Ok(value) => {
                if number > 1 {
                    info!(what, attempts = number, "JetStream set-up done");
                }
                return Ok(value);
            }
            Err(error) => error.into(),
        };
        if let Some(fix) = unfixable(error.as_ref()) {
            return Err(Error::Unfixable { what: what.to_owned(), fix, source: error });
        }
        let delay = backoff.next_delay();
        warn!(what, attempt = number, %error, retry_in = ?delay, "JetStream is not ready for this yet; retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Err(Error::ShutDown { what: what.to_owned() }),
        }
    }
    // 4 billion attempts at up to 10 s apart: only a shutdown ends the loop in practice.
    Err(Error::ShutDown { what: what.to_owned() })
}

/// JetStream error codes that say the configuration is wrong whatever the 4xx/5xx class the server gives
/// them: an invalid stream configuration or update (10052; e.g. a change of retention), a stream or
/// consumer that exists with other settings (10058, 10013, 10148), subjects that overlap another stream
/// (10065), replicas the servers cannot have (10074, 10061), work-queue consumer rules (10098–10101) and
/// back-off longer than the deliveries (10116).
const CONFIGURATION_ERRORS: [u64; 12] =
    [10052, 10058, 10013, 10148, 10065, 10074, 10061, 10098, 10099, 10100, 10101, 10116];

/// Why `error` cannot be fixed by waiting, if it cannot: a JetStream configuration error, or any other
/// API error of the 400 class except "no suitable peers", which a cluster that is still forming answers.
fn unfixable(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let api = api_error(error)?;
    let code = api.error_code();
    let no_peers_yet = code == jetstream::ErrorCode::CLUSTER_NO_PEERS;
    let configuration = CONFIGURATION_ERRORS.contains(&code.0) || (api.code() == 400 && !no_peers_yet);
    configuration.then(|| format!("JetStream error {}: fix the configuration; retrying cannot", code.0))
}

/// Whether `error` says the stream does not exist (JetStream error 10059).
pub(crate) fn stream_not_found(error: &(dyn std::error::Error + 'static)) -> bool {
    api_error(error).is_some_and(|api| api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The JetStream API error somewhere in `error`'s chain, if any.
fn api_error(error: &(dyn std::error::Error + 'static)) -> Option<jetstream::Error> {
    use jetstream::{
        context::{CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind},
        stream::{ConsumerError, ConsumerErrorKind},
    };
    let mut next = Some(error);
    while let Some(link) = next {
        if let Some(api) = link.downcast_ref::<jetstream::Error>() {
            return Some(api.clone());
        }
        if let Some(CreateStreamErrorKind::JetStream(api)) =
            link.downcast_ref::<CreateStreamError>().map(|e| e.kind())
        {
            return Some(api);
        }
        if let Some(GetStreamErrorKind::JetStream(api)) =
            link.downcast_ref::<GetStreamError>().map(|e| e.kind())
        {
            return Some(api);
        }
        if let Some(ConsumerErrorKind::JetStream(api)) =
            link.downcast_ref::<ConsumerError>().map(|e| e.kind())
        {
            return Some(api);
        }
        next = link.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: usize, err_code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({"code": code, "err_code": err_code, "description": "x"}))
            .expect("an API error")
    }

    #[test]
    fn configuration_conflicts_are_unfixable_and_a_forming_cluster_is_waited_for() {
        for (code, err_code) in [(500, 10052), (400, 10058), (400, 10065), (500, 10074), (400, 10003)] {
            assert!(unfixable(&api(code, err_code)).is_some(), "{err_code}");
        }
        for (code, err_code) in [(503, 10008), (400, 10005), (503, 10023), (404, 10059), (500, 10009)] {
            assert!(unfixable(&api(code, err_code)).is_none(), "{err_code}");
        }
    }

    #[test]
    fn an_api_error_is_found_inside_the_client_error_that_wraps_it() {
        use jetstream::context::{CreateStreamError, CreateStreamErrorKind};
        let wrapped = CreateStreamError::new(CreateStreamErrorKind::JetStream(api(500, 10052)));
        assert!(unfixable(&wrapped).is_some());
        let timed_out = CreateStreamError::new(CreateStreamErrorKind::TimedOut);
        assert!(unfixable(&timed_out).is_none(), "a timeout is waited out");
    }

    #[test]
    fn only_a_bucket_that_is_not_there_is_created_not_one_that_did_not_answer_in_time() {
        use jetstream::context::{GetStreamError, GetStreamErrorKind, KeyValueError, KeyValueErrorKind};
        let missing = KeyValueError::with_source(
            KeyValueErrorKind::GetBucket,
            GetStreamError::new(GetStreamErrorKind::JetStream(api(404, 10059))),
        );
        assert!(stream_not_found(&missing));
        let timed_out = KeyValueError::with_source(
            KeyValueErrorKind::GetBucket,
            GetStreamError::new(GetStreamErrorKind::Request),
        );
        assert!(!stream_not_found(&timed_out), "a get that timed out says nothing about the bucket");
    }
}
