//! Per-event cost of the detector's hot path: decoding a watch event's pod, classifying it and updating
//! the transition tracker, on pods as they look on real clusters (5, 10 and 20 KiB: managedFields, a
//! sidecar, an init container, env lists, probes, five conditions). One core's events per second is the
//! inverse of the time per event. The full `k8s_openapi` `Pod` decode of the 10 KiB pod is measured
//! beside it: it is what the watch decoded before the lean type.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use kubesent_detector::{classify::classify, lean::LeanPod, tracker::PodTracker};
use kubesent_kube_sim::realistic::{AppState, RealisticPod};

fn pod_json(state: AppState, size_kib: usize) -> String {
    serde_json::to_string(&RealisticPod::replica(1, state, size_kib).to_json()).expect("json")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("detector");
    group.throughput(Throughput::Elements(1));
    let failing: LeanPod = serde_json::from_str(&pod_json(AppState::OomCrashLoop, 10)).expect("pod");
    group.bench_function("classify (10 KiB pod, decoded)", |b| {
        b.iter(|| classify(std::hint::black_box(&failing)))
    });
    for size in [5, 10, 20] {
        for state in [AppState::Healthy, AppState::OomCrashLoop] {
            let json = pod_json(state, size);
            let name = format!("decode+classify+track {size} KiB {}", state.as_str());
            group.bench_with_input(BenchmarkId::new(name, json.len()), &json, |b, json| {
                let mut tracker = PodTracker::default();
                b.iter(|| {
                    let pod: LeanPod = serde_json::from_str(std::hint::black_box(json)).expect("pod");
                    tracker.observe(&pod)
                })
            });
        }
    }
    let json = pod_json(AppState::Healthy, 10);
    group.bench_with_input(
        BenchmarkId::new("full Pod decode+classify+track 10 KiB healthy", json.len()),
        &json,
        |b, json| {
            let mut tracker = PodTracker::default();
            b.iter(|| {
                let pod: Pod = serde_json::from_str(std::hint::black_box(json)).expect("pod");
                tracker.observe(&LeanPod::from(&pod))
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
