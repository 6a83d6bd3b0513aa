//! An admission webhook server for tests: it answers kube-sim's `AdmissionReview`s with whatever the
//! test decides, and keeps every review it got.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use serde_json::{Value, json};

type Answerer = dyn Fn(&Value) -> Value + Send + Sync;

/// A webhook server on a thread and runtime of its own: kube-sim calls webhooks from its write path,
/// which in tests may run on the test's own single-threaded runtime. Stops when dropped.
pub struct WebhookServer {
    addr: SocketAddr,
    reviews: Arc<Mutex<Vec<Value>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl WebhookServer {
    /// Starts a server whose answer to each review is `answer(review)` (see [`answer`]).
    pub fn start(answer: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Self {
        let reviews = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, addr) = std::sync::mpsc::channel();
        let answer: Arc<Answerer> = Arc::new(answer);
        let kept = reviews.clone();
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                ready.send(listener.local_addr().expect("addr")).expect("the test waits");
                let app = axum::Router::new().fallback(axum::routing::post(
                    move |axum::Json(review): axum::Json<Value>| {
                        let answer = answer.clone();
                        let kept = kept.clone();
                        async move {
                            kept.lock().expect("reviews").push(review.clone());
                            axum::Json(answer(&review))
                        }
                    },
                ));
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        Self { addr: addr.recv().expect("server address"), reviews, _stop: stop }
    }

    /// Its URL (`http://127.0.0.1:PORT/`).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Every review it got so far.
    pub fn reviews(&self) -> Vec<Value> {
        self.reviews.lock().expect("reviews").clone()
    }
}

/// The answer to `review`: allowed or refused with `status`, with an optional JSONPatch.
pub fn answer(review: &Value, allowed: bool, status: Value, patch: Option<Value>) -> Value {
    let mut response = json!({"uid": review["request"]["uid"], "allowed": allowed, "status": status});
    if let Some(patch) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// A webhook configuration (`kind`: Mutating or Validating) of one webhook `name` calling `url` for
/// `rule`, with `extra` merged into the webhook.
pub fn configuration(kind: &str, name: &str, url: &str, rule: Value, extra: Value) -> Value {
    let mut webhook = json!({"name": name, "clientConfig": {"url": url}, "rules": [rule],
        "sideEffects": "None", "admissionReviewVersions": ["v1"]});
    if let (Some(webhook), Some(extra)) = (webhook.as_object_mut(), extra.as_object()) {
        webhook.extend(extra.clone());
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
        "metadata": {"name": name.split('.').next().unwrap_or(name)}, "webhooks": [webhook]})
}

/// A rule for pods and `operations`.
pub fn pod_rule(operations: &[&str]) -> Value {
    json!({"operations": operations, "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]})
}
