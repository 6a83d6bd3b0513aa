//! Per-event cost of the detector's hot path: decoding a watch line into a Pod, classifying it and
//! updating the transition tracker. One core's events per second is the inverse of the total.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use kubesent_detector::{classify::classify, tracker::PodTracker};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

fn bench(c: &mut Criterion) {
    let failing_json = fixture("oom-crashloop.json");
    let healthy_json = fixture("healthy-stale-oom.json");
    let failing: Pod = serde_json::from_str(&failing_json).expect("pod");
    let mut group = c.benchmark_group("detector");
    group.throughput(Throughput::Elements(1));
    group.bench_function("classify", |b| b.iter(|| classify(std::hint::black_box(&failing))));
    group.bench_function("decode+classify+track (healthy pod event)", |b| {
        let mut tracker = PodTracker::default();
        b.iter(|| {
            let pod: Pod = serde_json::from_str(std::hint::black_box(&healthy_json)).expect("pod");
            tracker.observe(&pod)
        })
    });
    group.bench_function("decode+classify+track (failing pod event)", |b| {
        let mut tracker = PodTracker::default();
        b.iter(|| {
            let pod: Pod = serde_json::from_str(std::hint::black_box(&failing_json)).expect("pod");
            tracker.observe(&pod)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
