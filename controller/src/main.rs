//! `wasm-canary-controller`: runs CanaryRollouts.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canary_controller::api_requests;
use canary_controller::leader::{run_as_leader_until, Leadership, LeaseConfig};
use canary_controller::reconcile::{run_until, Context};
use canary_controller::telemetry::{serve, Metrics};
use clap::Parser;
use tracing::{error, info};

/// Runs canary rollouts through the wasm-canary filter: creates the canary ReplicaSet, and at
/// each step updates the WasmPlugin's pluginConfig and the DestinationRule subsets.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
    /// Disable leader election (run a single replica only!).
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "wasm-canary-system")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "wasm-canary-controller")]
    lease_name: String,
    /// Identity in the Lease (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Lease duration in seconds.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let metrics = Arc::new(Metrics::default());
    let client = api_requests::counted(kube::Client::try_default().await?, metrics.clone());
    let version = client.apiserver_version().await?;
    info!(server = %version.git_version, "connected to the API server");
    // Ready means "connected and able to take over": a standby replica is ready too, so a
    // Deployment of two rolls and reports available while only the leader acts (see the
    // `wasm_canary_leader` gauge for which one leads).
    metrics.set_ready(true);
    let server = tokio::spawn(serve(args.metrics_addr, metrics.clone()));
    info!(addr = %args.metrics_addr, "serving /metrics /healthz /readyz");
    // Listen for SIGTERM/SIGINT from the start: a signal that arrived before the controller
    // listened would be lost (and, with a handler installed, not kill the process either).
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop.send(true);
    });
    let requested = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    };
    let ctx = Arc::new(Context::with_metrics(client.clone(), metrics.clone()));
    let controller = run_until(ctx, args.namespace.clone(), Box::pin(requested()));
    let outcome = if args.no_leader_election {
        // The controller stops on SIGTERM/SIGINT, after the reconciles in flight.
        controller.await;
        Leadership::WorkEnded
    } else {
        let identity = args
            .identity
            .clone()
            .unwrap_or_else(|| format!("wasm-canary-controller-{}", std::process::id()));
        let mut cfg = LeaseConfig::new(&args.lease_namespace, &args.lease_name, identity);
        cfg.duration = Duration::from_secs(args.lease_seconds.max(3));
        cfg.renew_every = cfg.duration / 5;
        run_as_leader_until(client, cfg, &metrics, controller, requested()).await?
    };
    server.abort();
    if outcome == Leadership::Lost {
        // Losing the lease ends the process: the Deployment restarts it as a fresh candidate,
        // with no state in memory that could disagree with the cluster.
        error!("leadership lost; exiting");
        std::process::exit(1);
    }
    // A requested shutdown (SIGTERM from the kubelet, Ctrl-C) is a clean exit: status 0.
    info!("shut down");
    Ok(())
}

/// SIGTERM or SIGINT (Ctrl-C). Before this replica leads, nothing else listens for them.
async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        // Without a SIGTERM handler, Ctrl-C still works.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
