//! The model chain and the pool-wide rate limit against gemini-sim and a real nats-server.

use std::{sync::Arc, time::Duration};

use kubesent_common::nats;
use kubesent_diagnoser::{
    llm::{
        self, LlmError, ModelReply, Prompt,
        chain::{Backend, CallResult, ChainError, Model, ModelChain},
        gemini::{GeminiClient, Thinking},
        openai::OpenAiClient,
    },
    ratelimit::{self, Limits, Reservation, SharedLimiter},
};
use kubesent_gemini_sim::{GeminiSim, GeminiSimConfig, Reply};
use kubesent_testkit::nats_server::NatsServer;

const PATIENCE: Duration = Duration::from_secs(30);
const ANSWER: &str = r#"{"root_cause":"the cache grows without bound","action":"none","confidence":0.6}"#;

fn prompt() -> Prompt {
    Prompt { system: "system".into(), user: "user".into() }
}

async fn emulator(models: &[&str]) -> GeminiSim {
    let config = GeminiSimConfig {
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        ..GeminiSimConfig::default()
    };
    GeminiSim::start(config).await.expect("gemini-sim starts")
}

fn gemini_model(sim: &GeminiSim, name: &str) -> Model {
    let client =
        GeminiClient::new(&sim.url(), "test-key".to_owned().into(), Duration::from_secs(10)).expect("client");
    Model {
        name: name.into(),
        backend: Backend::Gemini(client, Thinking::for_model(name)),
        limiter: SharedLimiter::new(name, Limits { rpm: 6_000, tpm: None }, None),
    }
}

fn calls(sim: &GeminiSim, model: &str) -> usize {
    sim.requests().iter().filter(|r| r.model == model).count()
}

fn accept(reply: &ModelReply) -> Result<llm::ModelAnswer, LlmError> {
    llm::parse_answer(&reply.text)
}

#[tokio::test]
async fn the_chain_falls_back_past_rate_limited_missing_and_overloaded_models() {
    let sim = emulator(&["m1", "m2", "m3", "m4"]).await;
    sim.script(Some("m1"), Reply::RateLimited { retry_delay: "30s".into() });
    sim.script(Some("m2"), Reply::NotFound);
    sim.script(Some("m3"), Reply::Unavailable);
    sim.script(Some("m3"), Reply::Unavailable);
    sim.script(Some("m4"), Reply::Answer { text: ANSWER.into() });
    let chain = ModelChain::new(
        ["m1", "m2", "m3", "m4"].iter().map(|m| gemini_model(&sim, m)).collect(),
        Duration::from_secs(5),
    );
    let answered = chain.ask(&prompt(), accept).await.expect("m4 answers");
    assert_eq!(answered.model, "m4");
    assert_eq!(answered.value.root_cause, "the cache grows without bound");
    assert_eq!(
        [calls(&sim, "m1"), calls(&sim, "m2"), calls(&sim, "m3"), calls(&sim, "m4")],
        [1, 1, 2, 1],
        "m3 was retried once"
    );

    let metrics = chain.metrics();
    assert_eq!(
        [
            metrics.calls("m1", CallResult::RateLimited),
            metrics.calls("m2", CallResult::NotFound),
            metrics.calls("m3", CallResult::Transient),
            metrics.calls("m4", CallResult::Ok)
        ],
        [1, 1, 2, 1],
        "each call is counted by model and result"
    );
    assert_eq!([metrics.available("m1"), metrics.available("m2"), metrics.available("m4")], [0, 0, 1]);
    assert!(metrics.prompt_tokens("m4") > 0);

    sim.set_default_reply(Reply::Answer { text: ANSWER.into() });
    let answered = chain.ask(&prompt(), accept).await.expect("answered");
    assert_eq!(answered.model, "m3", "m1 is cooling down and m2 is retired");
    assert_eq!([calls(&sim, "m1"), calls(&sim, "m2")], [1, 1]);
    assert_eq!(metrics.available("m3"), 1);
}

#[tokio::test]
async fn when_every_model_is_cooling_the_gate_closes_until_the_earliest_retry() {
    let sim = emulator(&["only"]).await;
    sim.script(Some("only"), Reply::RateLimited { retry_delay: "1.5s".into() });
    let chain = ModelChain::new(vec![gemini_model(&sim, "only")], Duration::from_secs(5));
    let mut usable = chain.usable();
    let started = tokio::time::Instant::now();
    let err = chain.ask(&prompt(), accept).await.expect_err("no model available");
    let ChainError::Unavailable { until } = err else { panic!("expected Unavailable, got {err:?}") };
    let wait = until.duration_since(started);
    assert!(wait >= Duration::from_millis(1400) && wait < Duration::from_secs(3), "{wait:?}");
    assert!(!*usable.borrow_and_update(), "the workers stop pulling");
    tokio::time::timeout(PATIENCE, usable.wait_for(|open| *open))
        .await
        .expect("reopened")
        .expect("gate alive");
    assert!(tokio::time::Instant::now() >= until);
}

#[tokio::test]
async fn unusable_answers_fall_through_and_are_reported() {
    let sim = emulator(&["a", "b", "c", "d"]).await;
    sim.script(Some("a"), Reply::MaxTokens);
    sim.script(Some("b"), Reply::Safety);
    sim.script(Some("c"), Reply::BlockedPrompt);
    sim.script(Some("d"), Reply::Answer { text: "```json\nnot json at all\n```".into() });
    let chain = ModelChain::new(
        ["a", "b", "c", "d"].iter().map(|m| gemini_model(&sim, m)).collect(),
        Duration::from_secs(5),
    );
    let err = chain.ask(&prompt(), accept).await.expect_err("nothing usable");
    assert!(matches!(err, ChainError::Unusable(_)), "{err:?}");
    assert_eq!(sim.requests().len(), 4, "each model was asked once");
}

#[tokio::test]
async fn the_openai_compatible_backend_reads_answers_and_rate_limits() {
    let sim = emulator(&["local-llm"]).await;
    let client =
        OpenAiClient::new(&format!("{}/v1", sim.url()), None, Duration::from_secs(10)).expect("client");
    sim.script(Some("local-llm"), Reply::Answer { text: ANSWER.into() });
    let reply = client.generate("local-llm", &prompt()).await.expect("answer");
    assert_eq!(llm::parse_answer(&reply.text).map(|a| a.action), Ok(llm::ModelAction::None));
    sim.script(Some("local-llm"), Reply::RateLimited { retry_delay: "3s".into() });
    let err = client.generate("local-llm", &prompt()).await.expect_err("429");
    assert_eq!(err, LlmError::RateLimited { retry_after: Some(Duration::from_secs(3)), daily: false });
    let err = client.generate("no-such-model", &prompt()).await.expect_err("404");
    assert!(matches!(err, LlmError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn a_gemini_request_carries_the_key_header_schema_and_minimal_thinking() {
    let sim = emulator(&["gemini-3.5-flash"]).await;
    sim.script(None, Reply::Answer { text: ANSWER.into() });
    let client =
        GeminiClient::new(&sim.url(), "k-123".to_owned().into(), Duration::from_secs(10)).expect("client");
    client
        .generate("gemini-3.5-flash", &prompt(), &Thinking::for_model("gemini-3.5-flash"))
        .await
        .expect("answer");
    let request = &sim.requests()[0];
    assert_eq!(request.api_key.as_deref(), Some("k-123"));
    assert_eq!(request.body["generationConfig"]["responseMimeType"], "application/json");
    assert_eq!(request.body["generationConfig"]["responseJsonSchema"], llm::answer_schema());
    assert_eq!(request.body["generationConfig"]["thinkingConfig"]["thinkingLevel"], "minimal");
    assert_eq!(request.body["systemInstruction"]["parts"][0]["text"], "system");
    assert!(
        format!("{client:?}").contains("REDACTED") && !format!("{client:?}").contains("k-123"),
        "the key stays out of Debug"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_for_replicas_sharing_the_kv_bucket() {
    let server = NatsServer::start().await.expect("nats-server");
    let js = async_nats::jetstream::new(nats::connect(server.url(), "limits").await.expect("nats"));
    let bucket = ratelimit::bucket(&js, 1, &Default::default()).await.expect("bucket");
    let limits = Limits { rpm: 600, tpm: None };
    let replicas: Vec<Arc<SharedLimiter>> = (0..3)
        .map(|_| Arc::new(SharedLimiter::new("gemini-3.5-flash", limits, Some(bucket.clone()))))
        .collect();
    let mut tasks = Vec::new();
    for limiter in &replicas {
        for _ in 0..8 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                match limiter.reserve(100, Duration::from_secs(10)).await.expect("reserved") {
                    Reservation::Go(wait) => std::time::SystemTime::now() + wait,
                    Reservation::Busy(wait) => panic!("busy for {wait:?}"),
                }
            }));
        }
    }
    let mut slots = Vec::new();
    for task in tasks {
        slots.push(task.await.expect("task"));
    }
    slots.sort();
    // 600 RPM is one request per 100 ms for the pool (plus 1 % headroom). The slots are read back here
    // a little after they were reserved, so single gaps get some slack; the total span may not.
    for pair in slots.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap_or_default();
        assert!(gap >= Duration::from_millis(80), "requests only {gap:?} apart");
    }
    let span = slots[slots.len() - 1].duration_since(slots[0]).unwrap_or_default();
    assert!(span >= Duration::from_millis(23 * 100), "24 requests within {span:?}");
    assert_eq!(slots.len(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_budget_spaces_large_prompts_across_replicas() {
    let server = NatsServer::start().await.expect("nats-server");
    let js = async_nats::jetstream::new(nats::connect(server.url(), "tokens").await.expect("nats"));
    let bucket = ratelimit::bucket(&js, 1, &Default::default()).await.expect("bucket");
    // Requests are plentiful (60,000 RPM) but tokens are not: 60,000 TPM is 1 ms per token.
    let limits = Limits { rpm: 60_000, tpm: Some(60_000) };
    let a = SharedLimiter::new("m", limits, Some(bucket.clone()));
    let b = SharedLimiter::new("m", limits, Some(bucket));
    let mut waits = Vec::new();
    for limiter in [&a, &b, &a, &b] {
        match limiter.reserve(500, Duration::from_secs(10)).await.expect("reserved") {
            Reservation::Go(wait) => waits.push(wait),
            Reservation::Busy(wait) => panic!("busy for {wait:?}"),
        }
    }
    // Each 500-token request pushes the next one about half a second back, whichever replica asks.
    assert!(waits[0] < Duration::from_millis(50), "{waits:?}");
    for (i, wait) in waits.iter().enumerate().skip(1) {
        let expected = Duration::from_millis(500 * i as u64);
        assert!(
            *wait + Duration::from_millis(60) >= expected,
            "request {i} waits {wait:?}, expected about {expected:?}"
        );
    }
    match a.reserve(500, Duration::from_millis(100)).await.expect("answered") {
        Reservation::Busy(wait) => assert!(wait > Duration::from_millis(1500), "{wait:?}"),
        Reservation::Go(wait) => panic!("a slot {wait:?} away should be busy with a 100 ms limit"),
    }
}
