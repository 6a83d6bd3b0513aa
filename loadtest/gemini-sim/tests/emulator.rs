//! The emulator answers like the Gemini API does, over real HTTP.

use kubesent_gemini_sim::{GeminiSim, GeminiSimConfig, Reply};
use serde_json::{Value, json};

fn request() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "why did my pod die?"}]}],
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}}})
}

async fn call(sim: &GeminiSim, model: &str, key: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut builder =
        client.post(format!("{}/v1beta/models/{model}:generateContent", sim.url())).json(&request());
    if let Some(key) = key {
        builder = builder.header("x-goog-api-key", key);
    }
    let response = builder.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

#[tokio::test]
async fn scripted_answers_are_returned_in_order_then_the_default() {
    let sim = GeminiSim::start(GeminiSimConfig::default()).await.expect("starts");
    sim.script(None, Reply::Answer { text: "{\"action\":\"increase_memory\"}".into() });
    let (status, body) = call(&sim, "gemini-3.5-flash", Some("k")).await;
    assert_eq!(status, 200);
    assert_eq!(body["candidates"][0]["content"]["parts"][0]["text"], "{\"action\":\"increase_memory\"}");
    assert_eq!(body["modelVersion"], "gemini-3.5-flash");
    let (_, body) = call(&sim, "gemini-3.5-flash", Some("k")).await;
    assert!(
        body["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("no scripted answer"))
    );
    assert_eq!(sim.requests().len(), 2);
}

#[tokio::test]
async fn faults_use_the_real_error_bodies() {
    let sim = GeminiSim::start(GeminiSimConfig::default()).await.expect("starts");
    sim.script(Some("gemini-3.5-flash"), Reply::RateLimited { retry_delay: "1.5s".into() });
    sim.script(Some("gemini-3.5-flash"), Reply::Unavailable);
    let (status, body) = call(&sim, "gemini-3.5-flash", Some("k")).await;
    assert_eq!((status, body["error"]["status"].as_str()), (429, Some("RESOURCE_EXHAUSTED")));
    let retry = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .expect("RetryInfo");
    assert_eq!(retry["retryDelay"], "1.5s");
    let (status, body) = call(&sim, "gemini-3.5-flash", Some("k")).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (503, Some("The model is overloaded. Please try again later."))
    );
    let (status, body) = call(&sim, "gemini-pro", Some("k")).await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| m.contains("is not found for API version v1beta"))
    );
    let (status, body) = call(&sim, "gemini-3-pro-preview", Some("k")).await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("is no longer available")));
    let (status, _) = call(&sim, "gemini-3.5-flash", None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn the_rpm_quota_is_enforced_per_model_with_a_retry_delay() {
    let sim = GeminiSim::start(GeminiSimConfig { rpm_limit: Some(2), ..GeminiSimConfig::default() })
        .await
        .expect("starts");
    assert_eq!(call(&sim, "gemini-3.5-flash", Some("a")).await.0, 200);
    assert_eq!(call(&sim, "gemini-3.5-flash", Some("b")).await.0, 200);
    let (status, body) = call(&sim, "gemini-3.5-flash", Some("c")).await;
    assert_eq!(status, 429, "the quota is per project, shared by keys");
    assert!(body["error"]["details"][2]["retryDelay"].as_str().is_some_and(|d| d.ends_with('s')));
    assert_eq!(
        call(&sim, "gemini-3.5-flash-lite", Some("a")).await.0,
        200,
        "another model has its own quota"
    );
}
