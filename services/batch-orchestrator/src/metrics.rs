//! The service's own metric names and the Prometheus recorder behind `/metrics`. No metric is
//! labelled with a batch id (the original's `huleedu_pipeline_execution_total` was).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter, labels `method`, `route` (the route template, never ids) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "batch_orchestrator_http_requests_total";
/// Histogram, labels `method` and `route`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "batch_orchestrator_http_request_duration_seconds";
/// Counter: batches registered (committed).
pub const BATCHES_REGISTERED_TOTAL: &str = "batch_orchestrator_batches_registered_total";

const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first use. Every metric recorded through the
/// `metrics` facade, the outbox's included, renders through it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); then this one only
            // renders what is recorded through it, which is nothing.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            outbox_core::metrics::describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests by route and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request duration by route."
    );
    describe_counter!(BATCHES_REGISTERED_TOTAL, Unit::Count, "Batches registered.");
}

/// Counts and times every request by its route template.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
