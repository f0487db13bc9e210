//! The dashboard's HTTP surface: the page and its assets, the views as JSON and as
//! Server-Sent Events (a new view whenever the cluster changes), and the actions.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the page, with this run's token |
//! | `GET /assets/{file}` | its script, style and icon, compiled into the binary |
//! | `GET /api/rollouts` | the list view |
//! | `GET /api/stream` | the list view, pushed at every change (SSE event `list`) |
//! | `GET /api/rollouts/{ns}/{name}` | one rollout's view |
//! | `GET /api/rollouts/{ns}/{name}/stream` | the same, pushed (SSE `detail`, or `gone`) |
//! | `POST /api/rollouts/{ns}/{name}/actions/{action}` | promote, promote-full, abort, retry, pause, resume |
//!
//! Every request must pass [`Guard::check_host`]; every action [`Guard::check_action`].
//! Refusals are 403 with `{"error": "<why>"}`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use kube::Client;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use super::assets;
use super::guard::{Guard, Refusal, TOKEN_HEADER};
use super::observed::{self, SplitSource};
use super::view::{self, ListView, Observations, RolloutDetail};
use super::watch::{ClusterState, Scope};
use crate::cli::actions::{act, Action};
use crate::cli::error::RolloutError;
use crate::crd::CanaryRollout;

/// What every handler shares.
pub struct App {
    /// The watched cluster.
    pub cluster: Arc<ClusterState>,
    /// The user's client, for the actions.
    pub client: Client,
    /// The request checks.
    pub guard: Guard,
    /// The namespaces shown.
    pub scope: Scope,
    /// Where the observed split comes from, if anywhere.
    pub split: Option<SplitSource>,
    /// Becomes `true` when the dashboard stops: the open streams end.
    pub stopping: watch::Receiver<bool>,
}

/// The routes, with the `Host` check and the security headers on every response.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/api/rollouts", get(list_json))
        .route("/api/stream", get(list_stream))
        .route("/api/rollouts/{ns}/{name}", get(detail_json))
        .route("/api/rollouts/{ns}/{name}/stream", get(detail_stream))
        .route("/api/rollouts/{ns}/{name}/actions/{action}", post(perform))
        .layer(middleware::from_fn_with_state(app.clone(), check_host))
        .layer(middleware::map_response(security_headers))
        .with_state(app)
}

/// `403 {"error": ...}`.
fn refused(r: &Refusal) -> Response {
    (StatusCode::FORBIDDEN, Json(json!({"error": r.message()}))).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn check_host(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    match app
        .guard
        .check_host(header(request.headers(), header::HOST.as_str()))
    {
        Ok(()) => next.run(request).await,
        Err(r) => refused(&r),
    }
}

/// The page holds the token: no framing (clickjacking), no caching, no referrer, and only
/// its own scripts, styles and connections.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn index(State(app): State<Arc<App>>) -> Response {
    let config = assets::PageConfig {
        token: app.guard.token(),
        read_only: app.guard.read_only(),
        scope: app.scope.describe(),
        split: app.split.as_ref().map(SplitSource::describe),
        version: env!("CARGO_PKG_VERSION"),
    };
    match assets::index_html(&config) {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": format!("rendering the page: {e}")})),
        )
            .into_response(),
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    match assets::asset(&file) {
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no asset {file:?}")})),
        )
            .into_response(),
    }
}

fn list_view(app: &App) -> ListView {
    let rollouts = app.cluster.rollouts.state();
    let sets = app.cluster.replica_sets.state();
    view::list(
        &app.scope.describe(),
        &rollouts.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        &sets.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        app.cluster.problems(),
    )
}

fn detail_view(app: &App, ns: &str, name: &str) -> Option<RolloutDetail> {
    if !app.scope.contains(ns) {
        return None;
    }
    let rollout = app
        .cluster
        .rollouts
        .get(&ObjectRef::<CanaryRollout>::new(name).within(ns))?;
    let sets = app.cluster.replica_sets.state();
    let events = app.cluster.events.state();
    let key = (ns.to_owned(), name.to_owned());
    let seen = Observations {
        sets: view::sets_of(
            &rollout,
            &sets.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        ),
        events: events.iter().map(AsRef::as_ref).collect(),
        weights: app.cluster.weights(&key),
        split: app
            .split
            .as_ref()
            .map(|s| observed::view_of(s, &app.cluster, &key)),
        read_only: app.guard.read_only(),
        problems: app.cluster.problems(),
    };
    Some(view::detail(&rollout, seen))
}

fn not_in_scope(app: &App, ns: &str, name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!(
            "rollout {name} is not in namespace {ns} as this dashboard sees it ({})",
            app.scope.describe()
        )})),
    )
        .into_response()
}

async fn list_json(State(app): State<Arc<App>>) -> Json<ListView> {
    Json(list_view(&app))
}

async fn detail_json(
    State(app): State<Arc<App>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match detail_view(&app, &ns, &name) {
        Some(d) => Json(d).into_response(),
        None => not_in_scope(&app, &ns, &name),
    }
}

/// A view pushed as an SSE event at once and after every change that alters it.
fn pushed<F>(app: Arc<App>, make: F) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>>
where
    F: Fn(&App) -> (&'static str, String) + Send + Sync + 'static,
{
    struct Pushing<F> {
        app: Arc<App>,
        make: F,
        changes: watch::Receiver<u64>,
        stopping: watch::Receiver<bool>,
        last: Option<String>,
    }
    let state = Pushing {
        changes: app.cluster.subscribe(),
        stopping: app.stopping.clone(),
        app,
        make,
        last: None,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        loop {
            if s.last.is_some() {
                tokio::select! {
                    changed = s.changes.changed() => changed.ok()?,
                    _ = s.stopping.wait_for(|stop| *stop) => return None,
                }
            }
            if *s.stopping.borrow() {
                return None;
            }
            let (event, data) = (s.make)(&s.app);
            if s.last.as_deref() != Some(&data) {
                s.last = Some(data.clone());
                return Some((Ok(SseEvent::default().event(event).data(data)), s));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| json!({"error": e.to_string()}).to_string())
}

async fn list_stream(State(app): State<Arc<App>>) -> impl IntoResponse {
    pushed(app, |app| ("list", to_json(&list_view(app))))
}

async fn detail_stream(
    State(app): State<Arc<App>>,
    Path((ns, name)): Path<(String, String)>,
) -> impl IntoResponse {
    pushed(app, move |app| match detail_view(app, &ns, &name) {
        Some(d) => ("detail", to_json(&d)),
        None => (
            "gone",
            to_json(&json!({"error": format!("rollout {name} not found in namespace {ns}")})),
        ),
    })
}

/// How an action's failure is answered.
fn status_of(e: &RolloutError) -> StatusCode {
    match e {
        RolloutError::NotFound { .. } | RolloutError::NotInstalled => StatusCode::NOT_FOUND,
        RolloutError::Forbidden { .. } => StatusCode::FORBIDDEN,
        RolloutError::ControllerSilent { .. } => StatusCode::GATEWAY_TIMEOUT,
        e if e.is_refusal() => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

async fn perform(
    State(app): State<Arc<App>>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = app.guard.check_action(
        header(&headers, header::HOST.as_str()),
        header(&headers, header::ORIGIN.as_str()),
        header(&headers, TOKEN_HEADER),
    ) {
        return refused(&r);
    }
    let Some(action) = Action::from_name(&action) else {
        let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no action {action:?}; one of {}", known.join(", "))})),
        )
            .into_response();
    };
    if !app.scope.contains(&ns) {
        return not_in_scope(&app, &ns, &name);
    }
    match act(&app.client, &ns, &name, action).await {
        Ok(message) => {
            tracing::info!(%ns, %name, action = action.as_str(), "dashboard action");
            Json(json!({ "message": message })).into_response()
        }
        Err(e) => (status_of(&e), Json(json!({"error": e.to_string()}))).into_response(),
    }
}
