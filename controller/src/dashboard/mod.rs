//! `kubectl canary dashboard`: a live web page of the rollouts, served from the user's
//! machine with the user's kubeconfig.
//!
//! - [`watch`]: the cluster as the page needs it, mirrored by watches (rollouts, their
//!   ReplicaSets, their Events) plus the weight over time; a change wakes the open pages;
//! - [`observed`]: the split the filter made, read from a sidecar's Envoy admin counters or
//!   from Prometheus; [`history`]: both series, bounded;
//! - [`view`]: what the page shows, built from those (pure);
//! - [`api`]: the routes: page, JSON, Server-Sent Events, actions (through
//!   [`crate::cli::actions::act`], the path `kubectl canary promote/abort/...` takes);
//! - [`guard`]: `Host`, `Origin` and the per-run token; [`assets`]: the page, compiled in.

pub mod api;
pub mod assets;
pub mod guard;
pub mod history;
pub mod observed;
pub mod view;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use kube::Client;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use observed::SplitSource;
pub use watch::Scope;

/// The port `kubectl canary dashboard` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 3100;

/// What to show and allow.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// The namespaces shown.
    pub scope: Scope,
    /// Hide the buttons and refuse every action.
    pub read_only: bool,
    /// Where the observed split comes from, if anywhere.
    pub split: Option<SplitSource>,
}

/// Why the dashboard could not run.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}; choose another with --port / --address")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operating system gave no randomness for the token.
    #[error("no randomness for the dashboard token: {0}")]
    Token(getrandom::Error),
    /// Serving failed.
    #[error("serving the dashboard: {0}")]
    Serve(#[source] std::io::Error),
    /// The server task ended abnormally.
    #[error("the dashboard server stopped: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// A running dashboard; it stops when dropped (or, gracefully, with [`Dashboard::stop`]).
pub struct Dashboard {
    addr: SocketAddr,
    token: String,
    stop: tokio::sync::watch::Sender<bool>,
    server: Option<JoinHandle<Result<(), DashboardError>>>,
    _watching: watch::Watching,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl Dashboard {
    /// Binds `addr` (port 0: any free port), starts the watches and serves the page.
    pub async fn start(
        client: Client,
        addr: SocketAddr,
        options: DashboardOptions,
    ) -> Result<Dashboard, DashboardError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DashboardError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| DashboardError::Bind { addr, source })?;
        let token = guard::new_token().map_err(DashboardError::Token)?;
        let mut watching = watch::Watching::start(&client, &options.scope);
        if let Some(source) = options.split.clone() {
            watching.spawn(observed::read_forever(source, watching.state.clone()));
        }
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let app = Arc::new(api::App {
            cluster: watching.state.clone(),
            client,
            guard: guard::Guard::new(bound, token.clone(), options.read_only),
            scope: options.scope,
            split: options.split,
            stopping: stopping.clone(),
        });
        let mut until_stopped = stopping;
        let server = tokio::spawn(async move {
            axum::serve(listener, api::router(app))
                .with_graceful_shutdown(async move {
                    let _ = until_stopped.wait_for(|s| *s).await;
                })
                .await
                .map_err(DashboardError::Serve)
        });
        Ok(Dashboard {
            addr: bound,
            token,
            stop,
            server: Some(server),
            _watching: watching,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:3100/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// This run's token (the page carries it; tests send it).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Ends the open pages' streams, finishes the requests in flight, and stops.
    pub async fn stop(mut self) -> Result<(), DashboardError> {
        let _ = self.stop.send(true);
        match self.server.take() {
            Some(server) => server.await.map_err(DashboardError::Task)?,
            None => Ok(()),
        }
    }
}
