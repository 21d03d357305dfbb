//! Prometheus metrics of the web tier (and of the scaler it hosts).

use imgrec_domain::messages::Timings;
use imgrec_domain::ports::ApiCalls;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Seconds, from a few milliseconds to the response timeout.
const SECONDS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub queue_pending: IntGauge,
    pub queue_in_flight: IntGauge,
    pub desired_capacity: IntGauge,
    pub instances: IntGaugeVec,
    pub waiting_requests: IntGauge,
    pub oldest_waiting: Gauge,
    pub queue_wait: Histogram,
    pub inference: Histogram,
    pub batch_size: Histogram,
    /// Uploads answered with an earlier upload's answer (same idempotency key).
    pub replays: IntCounter,
    /// Jobs accepted, and their images.
    pub jobs: IntCounter,
    pub job_images: IntCounter,
    /// Jobs' callbacks this web tier delivered, gave up on, or took over from a lapsed lease.
    pub callbacks: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("imgrec_requests_total", "Classification requests by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("imgrec_request_duration_seconds", "Time from upload to answer")
                .buckets(SECONDS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let queue_pending = gauge("imgrec_queue_pending", "Requests waiting in the request queue");
        let queue_in_flight = gauge(
            "imgrec_queue_in_flight",
            "Requests received by a worker, not yet answered",
        );
        let desired_capacity = gauge("imgrec_desired_capacity", "App-tier instances the scaler wants");
        let waiting_requests = gauge("imgrec_waiting_requests", "HTTP requests waiting for their answer");
        let instances = IntGaugeVec::new(Opts::new("imgrec_instances", "App-tier instances by state"), &["state"])
            .expect("valid metric");
        for m in [&queue_pending, &queue_in_flight, &desired_capacity, &waiting_requests] {
            registry.register(Box::new(m.clone())).expect("unique metric");
        }
        registry.register(Box::new(requests.clone())).expect("unique metric");
        registry.register(Box::new(latency.clone())).expect("unique metric");
        registry.register(Box::new(instances.clone())).expect("unique metric");
        let callbacks = IntCounterVec::new(
            Opts::new(
                "imgrec_job_callbacks_total",
                "Jobs' callbacks by what this web tier did: delivered, gave_up, taken_over (a lapsed lease)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        registry.register(Box::new(callbacks.clone())).expect("unique metric");
        let oldest_waiting = Gauge::new(
            "imgrec_oldest_waiting_seconds",
            "How long this web tier's longest-waiting request has waited",
        )
        .expect("valid metric");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
        };
        let queue_wait = histogram(
            "imgrec_queue_wait_seconds",
            "From an upload's queueing to its worker fetching it",
            SECONDS.to_vec(),
        );
        let inference = histogram(
            "imgrec_inference_seconds",
            "Model run time per image of the run",
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
        );
        let batch_size = histogram(
            "imgrec_batch_size",
            "Images per model run, one observation per answered image",
            (1..=10).map(f64::from).collect(),
        );
        registry
            .register(Box::new(oldest_waiting.clone()))
            .expect("unique metric");
        for h in [&queue_wait, &inference, &batch_size] {
            registry.register(Box::new(h.clone())).expect("unique metric");
        }
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let replays = counter(
            "imgrec_idempotent_replays_total",
            "Uploads answered with the answer of the first upload of their idempotency key",
        );
        let jobs = counter("imgrec_jobs_total", "Jobs accepted");
        let job_images = counter("imgrec_job_images_total", "Images of the jobs accepted");
        Self {
            registry,
            requests,
            latency,
            queue_pending,
            queue_in_flight,
            desired_capacity,
            instances,
            waiting_requests,
            oldest_waiting,
            queue_wait,
            inference,
            batch_size,
            replays,
            jobs,
            job_images,
            callbacks,
        }
    }

    /// Where an answered request's time went on the app tier.
    pub fn observe(&self, timings: &Timings) {
        self.queue_wait.observe(timings.queue_wait_ms as f64 / 1e3);
        self.inference.observe(timings.inference_ms / 1e3);
        self.batch_size.observe(f64::from(timings.batch_size));
    }

    /// The registry's text, with the cloud API calls this process made (none locally).
    pub fn render(&self, calls: &ApiCalls) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        let mut text = String::from_utf8(out).expect("prometheus text is UTF-8");
        let calls = calls.snapshot();
        if !calls.is_empty() {
            text.push_str("# HELP imgrec_api_calls_total Cloud API calls of this process's adapters, by operation\n");
            text.push_str("# TYPE imgrec_api_calls_total counter\n");
            for (operation, n) in calls {
                text.push_str(&format!("imgrec_api_calls_total{{operation=\"{operation}\"}} {n}\n"));
            }
        }
        text
    }
}
