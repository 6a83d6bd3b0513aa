//! Approvals from Slack against the pipeline: a fix waits for approval (the autonomy policy says so), a
//! Slack interaction request arrives as Slack sends it (form-encoded, signed), the endpoint writes the
//! decision with its own decisions-only NATS user, the remediator carries it out, and the message is
//! updated in place through a local stand-in for Slack's response URL; a forged or stale request is
//! refused and a user who may not decide is told so, privately, with nothing decided.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, extract::State, routing::post};
use kubesent::slack::{self, SlackConfig, SlackState};
use kubesent_common::nats::{self, Role};
use kubesent_proto::{self as proto, OutcomeResult};
use kubesent_remediator::operator::Operator;
use kubesent_testkit::bus::next_outcome;
use serde_json::{Value, json};

mod support;

const SECRET: &str = "slack-signing-secret-for-the-test";

/// What Slack's response URL received.
type Received = Arc<Mutex<Vec<Value>>>;

async fn serve(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

async fn until(received: &Received, done: impl Fn(&[Value]) -> bool) {
    tokio::time::timeout(Duration::from_secs(90), async {
        while !done(&received.lock().expect("lock")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("Slack's response URL got what was expected in time");
}

/// A click as Slack posts it: `payload=<json>`, signed at `timestamp` with `secret`.
async fn click(
    endpoint: std::net::SocketAddr,
    response_url: &str,
    user: &str,
    action: &str,
    incident: &proto::IncidentId,
    secret: &str,
    timestamp: i64,
) -> u16 {
    let payload = json!({"type": "block_actions", "user": {"id": user, "username": user.to_lowercase()},
        "actions": [{"action_id": action, "value": incident.as_str()}], "response_url": response_url});
    let body =
        form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload.to_string()).finish();
    let timestamp = timestamp.to_string();
    let signature = slack::sign(secret.as_bytes(), &timestamp, body.as_bytes());
    reqwest::Client::new()
        .post(format!("http://{endpoint}/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", timestamp)
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await
        .expect("the endpoint answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approvers_click_is_carried_out_and_the_message_says_who_decided_and_how_it_ended() {
    let received: Received = Arc::default();
    let slack_side = axum::Router::new()
        .route(
            "/response",
            post(|State(received): State<Received>, Json(body): Json<Value>| async move {
                received.lock().expect("lock").push(body);
            }),
        )
        .with_state(received.clone());
    let response_url = format!("http://{}/response", serve(slack_side).await);

    let dir = tempfile::tempdir().expect("temp dir");
    let (stack, mut outcomes, waiting) = support::a_fix_waiting_for_approval(dir.path()).await;
    let as_slack = stack.users.args(stack.nats.url(), Role::Slack);
    let operator =
        Operator::connect_as(&as_slack, Role::Slack, "slack").await.expect("the slack user connects");
    let client = nats::connect_as(&as_slack, Role::Slack, "test").await.expect("connects");
    let state = Arc::new(SlackState {
        config: SlackConfig {
            signing_secret: SECRET.to_owned().into(),
            approvers: BTreeSet::from(["U123".to_owned()]),
            wait: Duration::from_secs(60),
        },
        operator,
        client,
        http: reqwest::Client::new(),
    });
    let endpoint = serve(slack::router(state)).await;

    let incident = waiting.incident.clone();
    let now = jiff::Timestamp::now().as_second();

    // Not Slack's: another secret, or a request replayed six minutes later.
    let forged =
        click(endpoint, &response_url, "U123", slack::APPROVE_ACTION, &incident, "guessed", now).await;
    assert_eq!(forged, 401);
    let stale =
        click(endpoint, &response_url, "U123", slack::APPROVE_ACTION, &incident, SECRET, now - 360).await;
    assert_eq!(stale, 401);
    // Someone who may not decide is told so, privately; nothing is decided.
    assert_eq!(
        click(endpoint, &response_url, "U999", slack::APPROVE_ACTION, &incident, SECRET, now).await,
        200
    );
    until(&received, |r| !r.is_empty()).await;
    let refused = received.lock().expect("lock")[0].clone();
    assert_eq!(refused["response_type"], "ephemeral", "{refused}");
    assert!(refused["text"].as_str().is_some_and(|t| t.contains("<@U999> is not allowed")), "{refused}");

    // An approver's click: carried out, and the message says by whom and how it ended.
    assert_eq!(
        click(endpoint, &response_url, "U123", slack::APPROVE_ACTION, &incident, SECRET, now).await,
        200
    );
    let healed = next_outcome(&mut outcomes).await;
    assert_eq!(
        (healed.incident.clone(), healed.result),
        (incident.clone(), OutcomeResult::Healed),
        "{}",
        healed.detail
    );
    assert_eq!(healed.decided_by.as_deref(), Some("slack:U123 (u123) (NATS user kubesent-slack)"));
    until(&received, |r| r.iter().any(|m| m["text"].as_str().is_some_and(|t| t.contains("healed")))).await;
    let updates: Vec<Value> = received.lock().expect("lock")[1..].to_vec();
    assert!(updates.iter().all(|m| m["replace_original"] == true), "{updates:?}");
    let last = updates.last().and_then(|m| m["text"].as_str()).unwrap_or_default().to_owned();
    assert!(
        last.starts_with(&format!(
            "{incident} approved by slack:U123 (u123) (NATS user kubesent-slack) — healed:"
        )),
        "{last}"
    );

    // A double click (or a replay within the five minutes): the fix is not waiting any more; the clicker
    // is told so, privately, and nothing is decided again. An incident KubeSent never recorded: the same.
    let before = received.lock().expect("lock").len();
    assert_eq!(
        click(endpoint, &response_url, "U123", slack::APPROVE_ACTION, &incident, SECRET, now).await,
        200
    );
    let unknown = proto::IncidentId("inc-0123456789abcdef01234567".into());
    assert_eq!(
        click(endpoint, &response_url, "U123", slack::REJECT_ACTION, &unknown, SECRET, now).await,
        200
    );
    until(&received, |r| r.len() >= before + 2).await;
    let answers: Vec<Value> = received.lock().expect("lock")[before..].to_vec();
    assert!(answers.iter().all(|m| m["response_type"] == "ephemeral"), "{answers:?}");
    let texts: Vec<&str> = answers.iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(
        texts.iter().any(|t| t.contains(&format!("incident {incident} is not waiting for approval"))),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("no remediation is recorded for incident inc-0123456789abcdef01234567")),
        "{texts:?}"
    );
    let outcomes_after = stack
        .js
        .get_stream(proto::OUTCOMES_STREAM)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(outcomes_after, 2, "awaiting approval, then healed: nothing more");
    stack.stop().await;
}
