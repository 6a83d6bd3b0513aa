//! The shared pull loop against a real nats-server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, consumer::pull};
use kubesent_common::nats::{self, PullOptions};
use kubesent_testkit::nats_server::NatsServer;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_answers_no_responders_is_asked_again_with_back_off_not_at_once() {
    let server = NatsServer::start().await.expect("nats-server");
    let client = nats::connect(server.url(), "puller").await.expect("nats");
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "WORK".into(),
            subjects: vec!["work.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(pull::Config { durable_name: Some("workers".into()), ..Default::default() })
        .await
        .expect("consumer");
    let handled = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let (_gate_tx, gate) = tokio::sync::watch::channel(true);
    let counter = handled.clone();
    let options = PullOptions { concurrency: 2, fetch_wait: Duration::from_millis(500) };
    let pulling = tokio::spawn(nats::pull_loop(consumer, options, gate, shutdown.clone(), move |message| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = message.ack().await;
        }
    }));
    js.publish("work.a", "one".into()).await.expect("published").await.expect("stored");
    while handled.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Without its consumer every fetch is answered at once with 503 (no responders), as during a
    // JetStream election. Count the requests the loop sends over two seconds.
    stream.delete_consumer("workers").await.expect("deleted");
    let statistics = client.statistics();
    let before = statistics.out_messages.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = statistics.out_messages.load(Ordering::Relaxed) - before;
    assert!(sent < 30, "{sent} requests in 2 s: the loop retries without back-off");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), pulling).await.expect("stops").expect("joined");
}
