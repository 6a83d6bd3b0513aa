//! The NATS permission layout of `deploy/base/nats/auth.conf`, loaded into a real nats-server: every role
//! can do what it does (set up what it owns, publish, consume, ack, use its buckets) and is refused what
//! it must not do. No anonymous client gets in.

use std::time::Duration;

use async_nats::{Event, ServerError, jetstream};
use futures::StreamExt as _;
use kubesent_common::nats::{self, NatsArgs, Role, Topology};
use kubesent_proto as proto;
use kubesent_testkit::nats_server::{NatsServer, NatsUsers};
use tokio::sync::mpsc;

/// How long a refusal may take to come back from the server.
const REFUSAL: Duration = Duration::from_secs(5);

/// A client connected as one role, with the server's errors (permission violations) on a channel.
struct As {
    role: Role,
    client: async_nats::Client,
    js: jetstream::Context,
    errors: mpsc::UnboundedReceiver<String>,
}

async fn connect(server: &NatsServer, users: &NatsUsers, role: Role) -> As {
    let (tx, errors) = mpsc::unbounded_channel();
    let observe = move |event: &Event| {
        if let Event::ServerError(error) = event {
            let _ = tx.send(match error {
                ServerError::AuthorizationViolation => "authorization violation".to_owned(),
                other => other.to_string(),
            });
        }
    };
    let client = nats::connect_observed(&users.args(server.url(), role), role, "test", observe)
        .await
        .expect("connects");
    client.flush().await.expect("connected");
    As { role, js: jetstream::new(client.clone()), client, errors }
}

impl As {
    /// Publishes on `subject` and expects the server to refuse it.
    async fn refused_publish(&mut self, subject: &str) {
        self.client.publish(subject.to_owned(), "forged".into()).await.expect("sent");
        self.client.flush().await.expect("flushed");
        self.expect_violation(subject).await;
    }

    /// Subscribes to `subject` and expects the server to refuse it.
    async fn refused_subscribe(&mut self, subject: &str) {
        let _subscription = self.client.subscribe(subject.to_owned()).await.expect("sent");
        self.client.flush().await.expect("flushed");
        self.expect_violation(subject).await;
    }

    async fn expect_violation(&mut self, subject: &str) {
        let error = tokio::time::timeout(REFUSAL, self.errors.recv())
            .await
            .unwrap_or_else(|_| panic!("{:?} was allowed {subject}", self.role))
            .expect("events");
        assert!(
            error.to_lowercase().contains("permissions violation") && error.contains(subject),
            "{:?} on {subject}: {error}",
            self.role
        );
    }

    /// Nothing this role did so far was refused.
    fn no_violations(&mut self) {
        if let Ok(error) = self.errors.try_recv() {
            panic!("{:?} was refused something it needs: {error}", self.role);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_anonymous_client_or_wrong_password_gets_in() {
    let (server, _users) = NatsServer::start_secured().await.expect("nats-server");
    let anonymous = async_nats::connect(server.url()).await;
    assert!(anonymous.is_err(), "anonymous clients are refused");
    let wrong =
        async_nats::ConnectOptions::with_user_and_password("kubesent-remediator".into(), "guess".into())
            .connect(server.url())
            .await;
    assert!(wrong.is_err(), "a wrong password is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_or_a_command_with_a_wrong_password_stops_at_once_naming_the_user_and_the_server() {
    let (server, _users) = NatsServer::start_secured().await.expect("nats-server");
    let wrong = NatsArgs::url(server.url()).with_user("kubesent-detector", "guess".to_owned());
    for role in [Role::Detector, Role::Reader] {
        // A service retries a server it cannot reach, never one that refuses its credentials.
        let refused = tokio::time::timeout(REFUSAL, nats::connect_as(&wrong, role, "test"))
            .await
            .unwrap_or_else(|_| panic!("{role:?} kept retrying refused credentials"))
            .expect_err("refused");
        let said = refused.to_string();
        assert!(matches!(refused, kubesent_common::Error::Refused { .. }), "{role:?}: {said}");
        assert!(said.contains("kubesent-detector") && said.contains(server.url()), "{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_can_do_its_work_and_is_refused_everything_else() {
    let (server, users) = NatsServer::start_secured().await.expect("nats-server");
    let topology = Topology::default();
    let never = tokio_util::sync::CancellationToken::new();

    // The detector creates the jobs stream and publishes a job; nothing else.
    let mut detector = connect(&server, &users, Role::Detector).await;
    nats::prepare(&detector.js, &topology, Role::Detector, &never).await.expect("the jobs stream");
    nats::publish(&detector.js, "kubesent.jobs.shop.oom-killed".into(), "job-1", b"{}".to_vec(), &[])
        .await
        .expect("a job");
    // And records what revisions served, the only role that may.
    let web = proto::WorkloadRef { kind: proto::WorkloadKind::Deployment, name: "web".into() };
    let served = kubesent_common::served::ServedStore::new(detector.js.clone());
    let record = |record: &mut proto::served::ServedRevisions| {
        record.record(
            "uid-web",
            proto::served::ServedRevision {
                name: "web-111".into(),
                hash: "111".into(),
                replicas: 3,
                healthy_since: jiff::Timestamp::UNIX_EPOCH,
                known_good_at: jiff::Timestamp::UNIX_EPOCH,
                until: None,
            },
        )
    };
    assert!(served.update("shop", &web, "uid-web", record).await.expect("a record"));
    assert!(served.read("shop", &web).await.expect("read").is_some());
    detector.no_violations();
    for subject in [
        "kubesent.verdicts.shop.rollback-image",
        "kubesent.outcomes.shop.healed",
        "$KV.kubesent-intents.inc-forged",
        "$KV.kubesent-intents.paused",
        "$JS.API.STREAM.DELETE.KUBESENT_JOBS",
        "$JS.API.STREAM.PURGE.KUBESENT_JOBS",
        "$JS.API.CONSUMER.CREATE.KUBESENT_JOBS.thief",
        "$JS.API.STREAM.UPDATE.KUBESENT_VERDICTS",
        "$JS.API.STREAM.PURGE.KV_kubesent-revisions",
    ] {
        detector.refused_publish(subject).await;
    }
    for subject in ["kubesent.>", "_INBOX.>", "_INBOX_kubesent_remediator.>", "$KV.kubesent-intents.>"] {
        detector.refused_subscribe(subject).await;
    }

    // The diagnoser consumes jobs, publishes verdicts and dead letters, uses the rate-limit bucket.
    let mut diagnoser = connect(&server, &users, Role::Diagnoser).await;
    nats::prepare(&diagnoser.js, &topology, Role::Diagnoser, &never).await.expect("verdicts and DLQ");
    let jobs = nats::open_consumer(&diagnoser.js, proto::JOBS_STREAM, topology.diagnosers_consumer(), &never)
        .await
        .expect("the diagnosers consumer");
    let mut batch = jobs.fetch().max_messages(1).expires(REFUSAL).messages().await.expect("fetch");
    let job = batch.next().await.expect("a job").expect("delivered");
    job.double_ack().await.expect("acked");
    nats::publish(
        &diagnoser.js,
        "kubesent.verdicts.shop.increase-memory".into(),
        "verdict-1",
        b"{}".to_vec(),
        &[],
    )
    .await
    .expect("a verdict");
    nats::publish(&diagnoser.js, proto::dlq_subject("diagnoser"), "dlq-1", b"{}".to_vec(), &[])
        .await
        .expect("a dead letter");
    let limits = nats::open_bucket(
        &diagnoser.js,
        jetstream::kv::Config { bucket: nats::roles::RATE_LIMIT_BUCKET.into(), ..Default::default() },
        &never,
    )
    .await
    .expect("the rate-limit bucket");
    limits.put("model-gemini", "1".into()).await.expect("a reservation");
    assert!(limits.get("model-gemini").await.expect("read").is_some());
    let served = kubesent_common::served::ServedStore::new(diagnoser.js.clone());
    assert!(served.read("shop", &web).await.expect("reads revisions").is_some());
    diagnoser.no_violations();
    for subject in [
        "kubesent.outcomes.shop.healed",
        "kubesent.jobs.shop.oom-killed",
        "kubesent.dlq.remediator",
        "$KV.kubesent-intents.inc-forged",
        "$KV.kubesent-intents.lock-0000",
        "$KV.kubesent-intents.paused",
        "$JS.API.DIRECT.GET.KV_kubesent-intents.$KV.kubesent-intents.guardrails",
        "$JS.API.CONSUMER.CREATE.KUBESENT_VERDICTS.remediator",
        "$JS.API.STREAM.DELETE.KUBESENT_OUTCOMES",
        "$JS.API.STREAM.UPDATE.KUBESENT_JOBS",
        "$KV.kubesent-revisions.shop.deployment.web",
    ] {
        diagnoser.refused_publish(subject).await;
    }
    diagnoser.refused_subscribe("kubesent.verdicts.>").await;

    // The remediator consumes verdicts, publishes outcomes, keeps and watches the intents bucket.
    let mut remediator = connect(&server, &users, Role::Remediator).await;
    nats::prepare(&remediator.js, &topology, Role::Remediator, &never).await.expect("outcomes and intents");
    let intents = nats::open_intents(&remediator.js, &topology, &never).await.expect("the intents bucket");
    let verdicts =
        nats::open_consumer(&remediator.js, proto::VERDICTS_STREAM, topology.remediator_consumer(), &never)
            .await
            .expect("the remediator consumer");
    let mut batch = verdicts.fetch().max_messages(1).expires(REFUSAL).messages().await.expect("fetch");
    batch.next().await.expect("a verdict").expect("delivered").double_ack().await.expect("acked");
    nats::publish(&remediator.js, "kubesent.outcomes.shop.healed".into(), "outcome-1", b"{}".to_vec(), &[])
        .await
        .expect("an outcome");
    nats::publish(&remediator.js, "kubesent.policy.demoted".into(), "policy-1", b"{}".to_vec(), &[])
        .await
        .expect("a policy change");
    let reverts =
        nats::open_consumer(&remediator.js, proto::OUTCOMES_STREAM, topology.reverts_consumer(), &never)
            .await
            .expect("the reversals consumer");
    let _ =
        reverts.fetch().max_messages(1).expires(Duration::from_millis(200)).messages().await.expect("fetch");
    let revision = intents.create("inc-1", "{}".into()).await.expect("an intent");
    intents.update("inc-1", "{\"phase\":1}".into(), revision).await.expect("advanced");
    let mut watch = intents.watch_all().await.expect("a watch");
    intents.put("lock-1", "inc-1".into()).await.expect("a lock");
    tokio::time::timeout(REFUSAL, watch.next()).await.expect("a change").expect("open").expect("entry");
    let mut keys = intents.keys().await.expect("keys");
    assert!(keys.next().await.is_some());
    let served = kubesent_common::served::ServedStore::new(remediator.js.clone());
    assert!(served.read("shop", &web).await.expect("reads revisions").is_some());
    remediator.no_violations();
    for subject in [
        "kubesent.jobs.shop.oom-killed",
        "kubesent.verdicts.shop.rollback-image",
        "$KV.kubesent-ratelimit.model-gemini",
        "$JS.API.CONSUMER.CREATE.KUBESENT_JOBS.diagnosers",
        "$JS.API.STREAM.DELETE.KUBESENT_VERDICTS",
        "$JS.API.STREAM.PURGE.KUBESENT_OUTCOMES",
        "$KV.kubesent-revisions.shop.deployment.web",
    ] {
        remediator.refused_publish(subject).await;
    }
    remediator.refused_subscribe("kubesent.>").await;

    // The operator reads intents, writes its own decisions and the kill switch, records reversals.
    let mut operator = connect(&server, &users, Role::Operator).await;
    let bucket = nats::existing_bucket(&operator.js, proto::INTENTS_BUCKET).await.expect("the bucket");
    assert!(bucket.get("inc-1").await.expect("read").is_some(), "reads intents");
    bucket.put("decision.kubesent-operator.inc-1", "{}".into()).await.expect("a decision");
    bucket.put("policy.kubesent-operator.memory-raise", "{}".into()).await.expect("a policy request");
    let _changes = operator.client.subscribe(proto::POLICY_SUBJECTS).await.expect("follows policy changes");
    bucket.put("paused", "maintenance".into()).await.expect("paused");
    bucket.delete("paused").await.expect("resumed");
    let _outcomes = operator.client.subscribe(proto::OUTCOMES_SUBJECTS).await.expect("follows outcomes");
    nats::publish(&operator.js, "kubesent.outcomes.shop.reverted".into(), "revert-1", b"{}".to_vec(), &[])
        .await
        .expect("a reversal");
    operator.no_violations();
    for subject in [
        "$KV.kubesent-intents.inc-1",
        "$KV.kubesent-intents.lock-1",
        "$KV.kubesent-intents.guardrails",
        "$KV.kubesent-intents.decision.kubesent-remediator.inc-1",
        "$KV.kubesent-intents.policy.kubesent-remediator.memory-raise",
        "$KV.kubesent-intents.autonomy.memory-raise",
        "$KV.kubesent-intents.record.memory-raise",
        "$KV.kubesent-intents.followup.inc-1",
        "kubesent.policy.promoted",
        "kubesent.outcomes.shop.healed",
        "kubesent.verdicts.shop.rollback-image",
        "kubesent.jobs.shop.oom-killed",
        "$JS.API.CONSUMER.CREATE.KUBESENT_VERDICTS.remediator",
        "$JS.API.STREAM.DELETE.KV_kubesent-intents",
    ] {
        operator.refused_publish(subject).await;
    }

    // A reader follows the audit log, the dead letters, the intents and the live subjects, and writes
    // nothing.
    let mut reader = connect(&server, &users, Role::Reader).await;
    let outcomes = reader.js.get_stream(proto::OUTCOMES_STREAM).await.expect("the audit stream");
    assert!(outcomes.direct_get(1).await.is_ok(), "reads an outcome");
    let ordered = outcomes
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut history = ordered.messages().await.expect("messages");
    tokio::time::timeout(REFUSAL, history.next()).await.expect("an outcome").expect("open").expect("message");
    let intents = reader.js.get_key_value(proto::INTENTS_BUCKET).await.expect("the intents bucket");
    let mut keys = intents.keys().await.expect("the intents' keys");
    let _ = tokio::time::timeout(REFUSAL, keys.next()).await;
    let _live = reader.client.subscribe("kubesent.>").await.expect("a live subscription");
    reader.client.flush().await.expect("flushed");
    reader.no_violations();
    for subject in [
        "kubesent.outcomes.shop.healed",
        "kubesent.jobs.shop.oom-killed",
        "kubesent.verdicts.shop.rollback-image",
        "$KV.kubesent-intents.paused",
        "$KV.kubesent-intents.inc-1",
        "$JS.API.CONSUMER.MSG.NEXT.KUBESENT_VERDICTS.remediator",
        "$JS.API.STREAM.PURGE.KV_kubesent-intents",
        "$KV.kubesent-revisions.shop.deployment.web",
    ] {
        reader.refused_publish(subject).await;
    }
    reader.refused_subscribe("_INBOX_kubesent_operator.>").await;

    // The notifier reads outcomes through its own durable consumer, acknowledges them, and nothing else.
    let mut notifier = connect(&server, &users, Role::Notifier).await;
    let never = tokio_util::sync::CancellationToken::new();
    let consumer = nats::open_consumer(
        &notifier.js,
        proto::OUTCOMES_STREAM,
        jetstream::consumer::pull::Config {
            durable_name: Some(proto::NOTIFIER_CONSUMER.to_owned()),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            filter_subject: proto::OUTCOMES_SUBJECTS.to_owned(),
            ..Default::default()
        },
        &never,
    )
    .await
    .expect("its own consumer");
    let mut outcomes = consumer.messages().await.expect("messages");
    let outcome = tokio::time::timeout(REFUSAL, outcomes.next())
        .await
        .expect("an outcome")
        .expect("open")
        .expect("message");
    outcome.ack().await.expect("acknowledged");
    notifier.client.flush().await.expect("flushed");
    notifier.no_violations();
    for subject in [
        "kubesent.outcomes.shop.healed",
        "$JS.API.CONSUMER.CREATE.KUBESENT_OUTCOMES.remediator",
        "$JS.API.DIRECT.GET.KV_kubesent-intents.$KV.kubesent-intents.inc-1",
        "$JS.API.STREAM.INFO.KUBESENT_JOBS",
    ] {
        notifier.refused_publish(subject).await;
    }
    notifier.refused_subscribe("kubesent.>").await;

    // `kubesent slack` reads intents, writes approvals and rejections under its own name, follows
    // outcomes; nothing else (no kill switch, no reversal, no policy request, no other user's decision).
    let mut slack = connect(&server, &users, Role::Slack).await;
    let bucket = nats::existing_bucket(&slack.js, proto::INTENTS_BUCKET).await.expect("the bucket");
    assert!(bucket.get("inc-1").await.expect("read").is_some(), "reads intents");
    bucket.put("decision.kubesent-slack.inc-1", "{}".into()).await.expect("a decision");
    let _outcomes = slack.client.subscribe(proto::OUTCOMES_SUBJECTS).await.expect("follows outcomes");
    slack.client.flush().await.expect("flushed");
    slack.no_violations();
    for subject in [
        "$KV.kubesent-intents.paused",
        "$KV.kubesent-intents.decision.kubesent-operator.inc-1",
        "$KV.kubesent-intents.policy.kubesent-slack.memory-raise",
        "$KV.kubesent-intents.inc-1",
        "kubesent.outcomes.shop.reverted",
        "kubesent.policy.promoted",
        "$JS.API.CONSUMER.CREATE.KV_kubesent-intents",
    ] {
        slack.refused_publish(subject).await;
    }
    slack.refused_subscribe("kubesent.jobs.>").await;
}

#[test]
fn the_deployed_layout_names_a_password_variable_for_every_role() {
    let layout = kubesent_testkit::nats_server::DEPLOY_AUTH_FILE;
    for role in Role::DEPLOYED {
        assert!(layout.contains(&format!("user: {}", role.service_name())), "{role:?} has a user");
        assert!(
            layout.contains(&format!("${}", role.password_variable())),
            "{role:?} has a password variable"
        );
        assert!(layout.contains(&format!("\"{}.>\"", role.inbox_prefix())), "{role:?} has its own inbox");
    }
    assert!(!layout.contains("no_auth_user"), "no anonymous user");
    let _ = NatsArgs::url("nats://x:4222");
}
