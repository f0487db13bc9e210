//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::crd::Phase;

/// Labels identifying one rollout.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub rollout: String,
}

/// Labels of a request to the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    /// The resource's plural name, with its subresource (`canaryrollouts/status`).
    pub resource: String,
}

/// Labels of an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `Error::metric_label()`.
    pub kind: String,
}

/// Labels of a phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub rollout: String,
    /// Phase name.
    pub phase: String,
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconcile failures by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub reconcile_seconds: Histogram,
    /// 1 for the rollout's current phase, 0 for the others.
    pub phase: Family<PhaseLabels, Gauge>,
    /// Canary weight in basis points.
    pub weight: Family<RolloutLabels, Gauge>,
    /// How long completed steps took.
    pub step_seconds: Family<RolloutLabels, Histogram>,
    /// Whether this replica holds the leader lease.
    pub leader: Gauge,
    /// Requests made to the API server, by verb and resource.
    pub api_requests: Family<ApiRequestLabels, Counter>,
    /// Reconciles not run because the cached rollout was older than the status the controller
    /// had written (the watch event bringing it runs the next one).
    pub stale_cache_skips: Counter,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("wasm_canary"),
            reconciles: Counter::default(),
            errors: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            phase: Family::default(),
            weight: Family::default(),
            step_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 14))
            }),
            leader: Gauge::default(),
            stale_cache_skips: Counter::default(),
            api_requests: Family::default(),
            ready: AtomicBool::new(false),
        };
        // Metric handles are shared (Arc inside): the registry holds clones of the fields.
        let r = &mut m.registry;
        r.register("reconciles", "Reconciles run", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconcile failures by kind",
            m.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "rollout_phase",
            "1 for the rollout's current phase",
            m.phase.clone(),
        );
        r.register(
            "rollout_canary_weight_basis_points",
            "Canary weight in force (10000 = 100%)",
            m.weight.clone(),
        );
        r.register(
            "rollout_step_duration_seconds",
            "Time from a step's start to its completion",
            m.step_seconds.clone(),
        );
        r.register(
            "api_requests",
            "Requests made to the API server, by verb and resource",
            m.api_requests.clone(),
        );
        r.register(
            "stale_cache_skips",
            "Reconciles not run: the cached rollout was older than the status the controller had written",
            m.stale_cache_skips.clone(),
        );
        r.register(
            "leader",
            "1 when this replica holds the leader lease",
            m.leader.clone(),
        );
        m
    }
}

impl Metrics {
    /// Records a rollout's phase and weight.
    pub fn observe_rollout(&self, namespace: &str, rollout: &str, phase: Phase, weight_bp: u32) {
        for p in [
            Phase::Progressing,
            Phase::Paused,
            Phase::Healthy,
            Phase::Aborted,
            Phase::Degraded,
        ] {
            let labels = PhaseLabels {
                namespace: namespace.into(),
                rollout: rollout.into(),
                phase: format!("{p:?}"),
            };
            self.phase.get_or_create(&labels).set(i64::from(p == phase));
        }
        self.weight
            .get_or_create(&RolloutLabels {
                namespace: namespace.into(),
                rollout: rollout.into(),
            })
            .set(i64::from(weight_bp));
    }

    /// Marks the controller ready (its watches are running).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (ready flag set) on `addr`
/// until the task is dropped. Plain HTTP/1.1, one request per connection.
pub async fn serve(addr: std::net::SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    serve_on(TcpListener::bind(addr).await?, metrics).await
}

/// [`serve`] on a listener already bound (tests bind 127.0.0.1:0).
pub async fn serve_on(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.render(),
                ),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                    ("200 OK", "text/plain", "ready\n".to_owned())
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_owned(),
                ),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "not found: try /metrics, /healthz, /readyz\n".to_owned(),
                ),
            };
            let response = format!("HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}
