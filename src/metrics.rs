//! Prometheus metrics: LUNA's request/error counters per route template, request
//! durations, and per-lambda series (requests, errors, instantiate and execute time,
//! builds). Depends on `model` only; gauges read at scrape time are passed in.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::model::LambdaId;

/// Instantiation is microseconds; execution is up to the request deadline.
/// Fine below 50 µs, where the targets are.
const INSTANTIATE_BUCKETS: &[f64] = &[
    2e-6, 4e-6, 6e-6, 8e-6, 1e-5, 1.25e-5, 1.5e-5, 2e-5, 3e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3,
    1e-2, 0.1,
];
const REQUEST_BUCKETS: &[f64] = &[
    1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];
/// Error codes a proxied request can end with (for dropping a lambda's series).
const LAMBDA_ERROR_CODES: &[u32] = &[1, 12047, 42007, 42008, 42009, 42010, 42013];
const BUILD_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// Resolved per-lambda series (see [`Metrics::for_lambda`]).
#[derive(Clone, Debug)]
pub struct LambdaMetrics {
    id: String,
    requests: IntCounter,
    errors: IntCounterVec,
    instantiate: Histogram,
    execute: Histogram,
    outbound: IntCounterVec,
}

/// What became of a guest's outbound HTTP call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// Sent and answered.
    Sent,
    /// Refused by the allow-list or the per-request budget.
    Denied,
    /// Allowed but failed (connect, timeout, protocol).
    Failed,
}

impl Outbound {
    const ALL: [Self; 3] = [Self::Sent, Self::Denied, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

impl LambdaMetrics {
    /// Counts a proxied request, and its LUNA error code if it failed.
    pub fn request(&self, error_code: Option<u32>) {
        self.requests.inc();
        if let Some(code) = error_code {
            self.errors
                .with_label_values(&[self.id.as_str(), &code.to_string()])
                .inc();
        }
    }

    /// Records an instantiation.
    pub fn observe_instantiate(&self, took: Duration) {
        self.instantiate.observe(took.as_secs_f64());
    }

    /// Counts one outbound HTTP call of a guest.
    pub fn outbound(&self, outcome: Outbound) {
        self.outbound
            .with_label_values(&[self.id.as_str(), outcome.label()])
            .inc();
    }

    /// Records a guest execution.
    pub fn observe_execute(&self, took: Duration) {
        self.execute.observe(took.as_secs_f64());
    }
}

/// Cheap-to-clone handle to every metric.
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    lambda_requests: IntCounterVec,
    lambda_errors: IntCounterVec,
    instantiate: HistogramVec,
    execute: HistogramVec,
    outbound: IntCounterVec,
    builds: HistogramVec,
    in_flight: IntGaugeVec,
    concurrency_limit: IntGaugeVec,
    engine: IntGaugeVec,
}

fn err(e: prometheus::Error) -> String {
    e.to_string()
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, String> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).map_err(err)?;
            registry.register(Box::new(c.clone())).map_err(err)?;
            Ok::<_, String>(c)
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .map_err(err)?;
            registry.register(Box::new(h.clone())).map_err(err)?;
            Ok::<_, String>(h)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).map_err(err)?;
            registry.register(Box::new(g.clone())).map_err(err)?;
            Ok::<_, String>(g)
        };
        let inner = Inner {
            requests: counter(
                "request_count_total",
                "Counter of requests",
                &["path", "status_code"],
            )?,
            errors: counter(
                "errors_count_total",
                "Counter of failed requests by LUNA error code",
                &["path", "error_code"],
            )?,
            duration: histogram(
                "request_duration_seconds",
                "Request duration until the response head",
                &["path"],
                REQUEST_BUCKETS,
            )?,
            lambda_requests: counter(
                "lambda_requests_total",
                "Proxied requests per lambda",
                &["lambda_id"],
            )?,
            lambda_errors: counter(
                "lambda_errors_total",
                "Failed proxied requests per lambda by LUNA error code",
                &["lambda_id", "error_code"],
            )?,
            instantiate: histogram(
                "lambda_instantiate_seconds",
                "Time to instantiate a fresh WASM instance from the pool",
                &["lambda_id"],
                INSTANTIATE_BUCKETS,
            )?,
            execute: histogram(
                "lambda_execute_seconds",
                "Guest execution time per request (after instantiation)",
                &["lambda_id"],
                REQUEST_BUCKETS,
            )?,
            outbound: counter(
                "lambda_outbound_requests_total",
                "Outbound HTTP calls of guests by outcome (sent, denied, failed)",
                &["lambda_id", "outcome"],
            )?,
            builds: histogram(
                "lambda_build_duration_seconds",
                "Image build (validate + compile + load) duration",
                &["result"],
                BUILD_BUCKETS,
            )?,
            in_flight: gauge(
                "lambda_pool_in_flight",
                "Requests executing in the lambda's sandboxes",
                &["lambda_id"],
            )?,
            concurrency_limit: gauge(
                "lambda_pool_concurrency_limit",
                "The lambda's max_concurrent_requests",
                &["lambda_id"],
            )?,
            engine: gauge(
                "wasm_engine",
                "Engine state: loaded lambdas, compilation cache hits and misses, pooling",
                &["item"],
            )?,
            registry,
        };
        Ok(Self(Arc::new(inner)))
    }

    /// Counts a finished request on a route template (`METHOD:/route`).
    pub fn request(
        &self,
        path: &str,
        status: http::StatusCode,
        error_code: Option<u32>,
        elapsed: Duration,
    ) {
        self.0
            .requests
            .with_label_values(&[path, status.as_str()])
            .inc();
        if let Some(code) = error_code {
            self.0
                .errors
                .with_label_values(&[path, &code.to_string()])
                .inc();
        }
        self.0
            .duration
            .with_label_values(&[path])
            .observe(elapsed.as_secs_f64());
    }

    /// The per-request series of one lambda, resolved once so the hot path does no
    /// label lookups.
    pub fn for_lambda(&self, lambda: LambdaId) -> LambdaMetrics {
        let id = lambda.to_string();
        LambdaMetrics {
            requests: self.0.lambda_requests.with_label_values(&[&id]),
            errors: self.0.lambda_errors.clone(),
            instantiate: self.0.instantiate.with_label_values(&[&id]),
            execute: self.0.execute.with_label_values(&[&id]),
            outbound: self.0.outbound.clone(),
            id,
        }
    }

    /// Records a finished build.
    pub fn observe_build(&self, ok: bool, took: Duration) {
        self.0
            .builds
            .with_label_values(&[if ok { "completed" } else { "error" }])
            .observe(took.as_secs_f64());
    }

    /// Drops every series of a deleted lambda.
    pub fn forget_lambda(&self, lambda: LambdaId) {
        let id = lambda.to_string();
        let i = &self.0;
        let _ = i.instantiate.remove_label_values(&[&id]);
        let _ = i.execute.remove_label_values(&[&id]);
        let _ = i.in_flight.remove_label_values(&[&id]);
        let _ = i.concurrency_limit.remove_label_values(&[&id]);
        let _ = i.lambda_requests.remove_label_values(&[&id]);
        for code in LAMBDA_ERROR_CODES {
            let _ = i
                .lambda_errors
                .remove_label_values(&[&id, &code.to_string()]);
        }
        for outcome in Outbound::ALL {
            let _ = i.outbound.remove_label_values(&[&id, outcome.label()]);
        }
    }

    /// Renders the text exposition; `occupancy` and `engine` are read at scrape time.
    pub fn render(&self, occupancy: &[(LambdaId, usize, u32)], engine: &[(&str, i64)]) -> String {
        for (lambda, in_flight, limit) in occupancy {
            let id = lambda.to_string();
            self.0
                .in_flight
                .with_label_values(&[&id])
                .set(i64::try_from(*in_flight).unwrap_or(i64::MAX));
            self.0
                .concurrency_limit
                .with_label_values(&[&id])
                .set(i64::from(*limit));
        }
        for (item, value) in engine {
            self.0.engine.with_label_values(&[item]).set(*value);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.0.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot render metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
