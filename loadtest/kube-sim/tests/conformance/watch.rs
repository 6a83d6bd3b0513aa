//! Lists and watches as kube-runtime uses them: paging, 410, bookmarks, streaming lists, dropped watches and restarts.

use super::*;

#[tokio::test]
async fn the_watcher_lists_pages_then_streams_changes() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::all(client(&sim));
    let shop: Api<Pod> = Api::namespaced(client(&sim), "shop");
    for i in 0..5 {
        shop.create(&PostParams::default(), &pod(&format!("pre-{i}"), "256Mi", "1Mi"))
            .await
            .expect("created");
    }
    let config = watcher::Config::default().page_size(2);
    let mut events = watcher(pods, config).boxed();
    let mut initial = 0;
    loop {
        match events.try_next().await.expect("watch ok").expect("stream open") {
            watcher::Event::InitApply(_) => initial += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, 5);
    shop.create(&PostParams::default(), &pod("late", "256Mi", "1Mi")).await.expect("created");
    let seen = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.try_next().await.expect("watch ok") {
            if let watcher::Event::Apply(p) = event
                && p.metadata.name.as_deref() == Some("late")
            {
                return true;
            }
        }
        false
    })
    .await
    .expect("in time");
    assert!(seen);
    assert!(
        sim.requests().iter().any(|r| r.query.contains("continue=")),
        "the watcher paged through the list"
    );
}

#[tokio::test]
async fn a_watch_from_an_expired_resource_version_gets_an_in_stream_410() {
    let sim = KubeSim::start(SimConfig {
        time_scale: FAST,
        store: kubesent_kube_sim::StoreConfig { history_per_resource: 2, watch_buffer: 64 },
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let first = pods.create(&PostParams::default(), &pod("a", "256Mi", "1Mi")).await.expect("created");
    let old_rv = first.metadata.resource_version.expect("rv");
    // The kubelet's status updates push the first revision out of the 3-event history.
    wait_for(&pods, "a", conditions::is_pod_running()).await;
    let mut stream =
        pods.watch(&WatchParams::default().timeout(5), &old_rv).await.expect("watch starts").boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!(status.code, 410);
            assert!(
                status.message.starts_with(&format!("too old resource version: {old_rv} (")),
                "{}",
                status.message
            );
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_come_only_when_asked_and_timeout_seconds_closes_the_watch() {
    let sim = KubeSim::start(SimConfig {
        time_scale: FAST,
        bookmark_interval: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let created = pods.create(&PostParams::default(), &pod("a", "256Mi", "1Mi")).await.expect("created");
    let rv = created.metadata.resource_version.expect("rv");

    let with = pods.watch(&WatchParams::default().timeout(1), &rv).await.expect("watch").boxed();
    let events: Vec<_> =
        tokio::time::timeout(PATIENCE, with.collect::<Vec<_>>()).await.expect("closed after timeoutSeconds");
    let bookmarks = events.iter().filter(|e| matches!(e, Ok(WatchEvent::Bookmark(_)))).count();
    assert!(bookmarks >= 2, "periodic bookmarks and one before the timeout, got {bookmarks}");

    let without =
        pods.watch(&WatchParams::default().disable_bookmarks().timeout(1), &rv).await.expect("watch").boxed();
    let events: Vec<_> = tokio::time::timeout(PATIENCE, without.collect::<Vec<_>>())
        .await
        .expect("closed after timeoutSeconds");
    assert!(events.iter().all(|e| !matches!(e, Ok(WatchEvent::Bookmark(_)))), "no bookmark unless asked");
    assert!(
        events.iter().any(|e| matches!(e, Ok(WatchEvent::Modified(_)))),
        "the kubelet's status updates are streamed"
    );
}

#[tokio::test]
async fn a_streaming_list_sends_initial_events_then_an_end_bookmark() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("s{i}"), "256Mi", "1Mi")).await.expect("created");
    }
    let mut events = watcher(pods.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = 0;
    loop {
        match tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open")
        {
            watcher::Event::InitApply(_) => initial += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, 3);
    let first = sim
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path == "/api/v1/namespaces/shop/pods")
        .expect("a request");
    assert!(first.query.contains("sendInitialEvents=true"), "{}", first.query);
    assert!(
        !sim.requests()
            .iter()
            .any(|r| r.path == "/api/v1/namespaces/shop/pods" && r.query.contains("limit=")),
        "no list call"
    );
}

#[tokio::test]
async fn dropped_watches_and_a_restart_resume_from_the_last_resource_version_without_a_relist() {
    let mut sim = sim().await;
    let shop: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let mut events = watcher(shop.clone(), watcher::Config::default()).boxed();
    loop {
        if let watcher::Event::InitDone = events.try_next().await.expect("ok").expect("open") {
            break;
        }
    }
    sim.state().faults.drop_watches();
    shop.create(&PostParams::default(), &pod("after-drop", "256Mi", "1Mi")).await.expect("created");
    let seen = expect_apply(&mut events, "after-drop").await;
    let rv_before_restart: u64 = seen.metadata.resource_version.expect("rv").parse().expect("number");

    sim.restart().await.expect("restarted on the same port");
    let shop: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let created =
        shop.create(&PostParams::default(), &pod("after-restart", "256Mi", "1Mi")).await.expect("created");
    let rv_after: u64 = created.metadata.resource_version.expect("rv").parse().expect("number");
    assert!(rv_after > rv_before_restart, "resourceVersions continue across the restart");
    expect_apply(&mut events, "after-restart").await;

    let lists = sim
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET" && r.path == "/api/v1/namespaces/shop/pods" && !r.query.contains("watch=")
        })
        .count();
    assert_eq!(lists, 1, "the watcher re-watched from its resourceVersion instead of listing again");
}

#[tokio::test]
async fn a_continue_token_older_than_the_history_is_expired() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("c{i}"), "256Mi", "1Mi")).await.expect("created");
    }
    let first = pods.list(&ListParams::default().limit(1)).await.expect("first page");
    let token = first.metadata.continue_.clone().expect("more pages");
    pods.list(&ListParams::default().limit(1).continue_token(&token)).await.expect("a fresh token works");
    // A write after the list, then a compaction: the list's revision is gone from history.
    pods.create(&PostParams::default(), &pod("later", "256Mi", "1Mi")).await.expect("created");
    sim.state().store.compact(&kubesent_kube_sim::resources::PODS);
    let err = pods.list(&ListParams::default().limit(1).continue_token(&token)).await.expect_err("expired");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(status.message.starts_with("The provided continue parameter is too old"), "{}", status.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_ends_even_while_clients_watch_again_the_moment_their_watch_ends() {
    use k8s_openapi::api::coordination::v1::Lease;
    let mut sim = sim().await;
    let client = client(&sim);
    // Watchers that re-watch at once, as kube-runtime's watcher does after a dropped watch: a watch
    // that arrives while the server drains must not keep the restart waiting.
    let mut watchers = Vec::new();
    for _ in 0..4 {
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kubesent");
        watchers.push(tokio::spawn(async move {
            let mut events = watcher(leases, watcher::Config::default()).boxed();
            while events.next().await.is_some() {}
        }));
    }
    for attempt in 0..20 {
        tokio::time::timeout(PATIENCE, sim.restart())
            .await
            .unwrap_or_else(|_| panic!("restart {attempt} did not end"))
            .expect("restarted");
        // A pooled connection the restart closed can fail one request, as against a real apiserver.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let list = || async {
            tokio::time::timeout(PATIENCE, pods.list(&ListParams::default()))
                .await
                .unwrap_or_else(|_| panic!("no answer {attempt}: a request after the restart hung"))
        };
        let mut served = list().await;
        for _ in 0..3 {
            if served.is_ok() {
                break;
            }
            served = list().await;
        }
        served.expect("serving again");
    }
    for watcher in watchers {
        watcher.abort();
    }
}
