//! A kube client whose requests pass through a fault injector: the requests a rule matches get
//! a 500 or 409 `Status` from the injector instead of the API server's answer, as a failing
//! etcd leader or a concurrent writer would produce; all others reach the real API server.

use std::sync::{Arc, Mutex};

use canary_controller::api_requests::intercepted;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::json;

type Matcher = Box<dyn Fn(&Method, &str) -> bool + Send + Sync>;

struct Rule {
    matches: Matcher,
    codes: Vec<u16>,
    /// Chance (per mille) that a matching request fails.
    per_mille: u64,
    /// How many more matching requests fail (None: no limit).
    remaining: Option<usize>,
}

/// The rules in force and what they injected.
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    rng: Mutex<u64>,
    injected: Mutex<Vec<String>>,
}

impl Faults {
    /// No rules yet; `seed` makes the random rules repeatable.
    pub fn new(seed: u64) -> Arc<Faults> {
        Arc::new(Faults {
            rules: Mutex::new(Vec::new()),
            rng: Mutex::new(seed | 1),
            injected: Mutex::new(Vec::new()),
        })
    }

    /// The next `n` requests `matches` selects (method, path and query) fail with `code`.
    pub fn fail_next(
        &self,
        n: usize,
        code: u16,
        matches: impl Fn(&Method, &str) -> bool + Send + Sync + 'static,
    ) {
        self.rules.lock().unwrap().push(Rule {
            matches: Box::new(matches),
            codes: vec![code],
            per_mille: 1000,
            remaining: Some(n),
        });
    }

    /// Each request `matches` selects fails with chance `per_mille`/1000, with one of `codes`.
    pub fn fail_randomly(
        &self,
        per_mille: u64,
        codes: &[u16],
        matches: impl Fn(&Method, &str) -> bool + Send + Sync + 'static,
    ) {
        self.rules.lock().unwrap().push(Rule {
            matches: Box::new(matches),
            codes: codes.to_vec(),
            per_mille,
            remaining: None,
        });
    }

    /// Removes every rule: from now on every request reaches the API server.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// The requests answered by the injector (`409 PATCH /apis/...`), in order.
    pub fn injected(&self) -> Vec<String> {
        self.injected.lock().unwrap().clone()
    }

    fn random(&self) -> u64 {
        // xorshift64: repeatable for a seed, no dependency.
        let mut x = self.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    fn decide(&self, method: &Method, path: &str) -> Option<u16> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules
            .iter_mut()
            .find(|r| r.remaining != Some(0) && (r.matches)(method, path))?;
        if rule.per_mille < 1000 && self.random() % 1000 >= rule.per_mille {
            return None;
        }
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
        }
        let code = rule.codes[(self.random() % rule.codes.len() as u64) as usize];
        self.injected
            .lock()
            .unwrap()
            .push(format!("{code} {method} {path}"));
        Some(code)
    }
}

/// Writes: what a controller changes (not reads, not watches).
pub fn is_write(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method)
}

/// `inner` with `faults` injected into its requests.
pub fn client(inner: Client, faults: Arc<Faults>) -> Client {
    intercepted(
        inner,
        Arc::new(move |request: &Request<Body>| {
            let path = request.uri().path_and_query().map_or("", |p| p.as_str());
            let code = faults.decide(request.method(), path)?;
            let reason = if code == 409 {
                "Conflict"
            } else {
                "InternalError"
            };
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("injected by the test: {reason}"), "reason": reason, "code": code});
            Some(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            )
        }),
    )
}
