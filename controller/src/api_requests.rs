//! Every request the controller makes to the API server, counted by verb and resource
//! (`wasm_canary_api_requests_total`): reads served from watches show up as watches, a list per
//! reconcile would show up as lists. kube-rs counts nothing itself; the client is wrapped
//! ([`intercepted`], which the fault tests use too).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::FutureExt;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;

use crate::telemetry::{ApiRequestLabels, Metrics};

/// Runs before each request: `Some(response)` answers it in place of the API server.
pub type Hook = Arc<dyn Fn(&Request<Body>) -> Option<Response<Body>> + Send + Sync>;

/// `client` with `hook` run before each of its requests (counting them, or, in tests, failing
/// some on purpose).
pub fn intercepted(client: Client, hook: Hook) -> Client {
    let namespace = client.default_namespace().to_owned();
    Client::new(
        Intercepted {
            inner: client,
            hook,
        },
        namespace,
    )
}

/// `client`, counting each request into `metrics`.
pub fn counted(client: Client, metrics: Arc<Metrics>) -> Client {
    intercepted(
        client,
        Arc::new(move |request: &Request<Body>| {
            let path = request.uri().path_and_query().map_or("", |p| p.as_str());
            let labels = classify(request.method(), path);
            metrics.api_requests.get_or_create(&labels).inc();
            None
        }),
    )
}

/// The labels of a request: the Kubernetes verb and the resource (with its subresource).
pub fn classify(method: &Method, path_and_query: &str) -> ApiRequestLabels {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...; then [namespaces/<ns>/]<resource>[/<name>[/<sub>]]
    let rest: &[&str] = match segments.first().copied() {
        Some("api") => segments.get(2..).unwrap_or_default(),
        Some("apis") => segments.get(3..).unwrap_or_default(),
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, named) = match rest {
        [] => ("other".to_owned(), false),
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    };
    ApiRequestLabels {
        verb: verb.to_owned(),
        resource,
    }
}

#[derive(Clone)]
struct Intercepted {
    inner: Client,
    hook: Hook,
}

impl tower::Service<Request<Body>> for Intercepted {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Some(response) = (self.hook)(&request) {
            return futures::future::ready(Ok(response)).boxed();
        }
        let inner = self.inner.clone();
        async move { inner.send(request).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        let cases = [
            (Method::GET, "/apis/apps/v1/namespaces/b/replicasets?labelSelector=x", "list", "replicasets"),
            (Method::GET, "/apis/apps/v1/namespaces/b/replicasets?watch=true&resourceVersion=1", "watch", "replicasets"),
            (Method::GET, "/apis/apps/v1/namespaces/b/deployments/reviews", "get", "deployments"),
            (Method::PATCH, "/apis/wasmcanary.io/v1alpha1/namespaces/b/canaryrollouts/r/status?fieldManager=m", "patch", "canaryrollouts/status"),
            (Method::PATCH, "/apis/extensions.istio.io/v1alpha1/namespaces/b/wasmplugins/wasm-canary?force=true", "patch", "wasmplugins"),
            (Method::POST, "/apis/events.k8s.io/v1/namespaces/b/events", "create", "events"),
            (Method::GET, "/apis/wasmcanary.io/v1alpha1/clusteranalysistemplates/t", "get", "clusteranalysistemplates"),
            (Method::GET, "/api/v1/namespaces/b/secrets/s", "get", "secrets"),
            (Method::GET, "/api/v1/namespaces", "list", "namespaces"),
            (Method::GET, "/version", "list", "other"),
        ];
        for (method, path, verb, resource) in cases {
            let l = classify(&method, path);
            assert_eq!(
                (l.verb.as_str(), l.resource.as_str()),
                (verb, resource),
                "{method} {path}"
            );
        }
    }
}
