//! The demo's user traffic: a few keep-alive clients that send requests to `reviews` through
//! the client sidecar until stopped, counting each response against the rollout step that was
//! live when the request was sent.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use wasm_canary_e2e::display::StepCounts;
use wasm_canary_e2e::mesh::{Mesh, CANARY_HASH, STABLE_HASH};

/// The host users address, as a Kubernetes client would.
pub const REVIEWS_HOST: &str = "reviews:9080";

/// The response header the server-side filter tags each response with.
pub const VERSION_TAG: &str = "x-rollouts-pod-template-hash";

/// No step is live (a config push is under way): responses are not counted.
const BETWEEN_STEPS: usize = usize::MAX;

/// What one step of the rollout saw. Counters only grow.
#[derive(Default)]
pub struct StepTally {
    /// Requests sent while this step was live; `requests` counts those that completed.
    pub sent: AtomicU64,
    pub requests: AtomicU64,
    pub canary: AtomicU64,
    /// Responses with a status outside 2xx, transport errors, and 2xx responses that carry no
    /// known version tag (the server-side filter did not tag them).
    pub failures: AtomicU64,
    /// What the first failure was, for the error message.
    pub first_failure: Mutex<Option<String>>,
}

/// Adds one to a counter when dropped: after the response has been classified.
struct CompletedOnDrop<'a>(&'a AtomicU64);

impl Drop for CompletedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl StepTally {
    /// True once every request sent during the step has completed and been counted.
    pub fn settled(&self) -> bool {
        self.requests.load(Ordering::Acquire) >= self.sent.load(Ordering::Acquire)
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> StepCounts {
        StepCounts {
            requests: self.requests.load(Ordering::Relaxed),
            canary: self.canary.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    pub fn first_failure(&self) -> Option<String> {
        self.first_failure.lock().ok().and_then(|f| f.clone())
    }

    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_failure.lock() {
            first.get_or_insert(what);
        }
    }
}

/// Running user traffic. Dropping it stops and joins every client thread.
pub struct UserLoad {
    stop: Arc<AtomicBool>,
    live_step: Arc<AtomicUsize>,
    tallies: Arc<Vec<StepTally>>,
    clients: Vec<JoinHandle<()>>,
}

impl UserLoad {
    /// Starts `clients` keep-alive clients against the mesh, one tally per step. Each client
    /// stops at `deadline` (or after a million requests) even if nobody stops it.
    pub fn start(mesh: &Mesh, clients: usize, steps: usize, deadline: Duration) -> UserLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let live_step = Arc::new(AtomicUsize::new(BETWEEN_STEPS));
        let tallies: Arc<Vec<StepTally>> =
            Arc::new((0..steps).map(|_| StepTally::default()).collect());
        let until = Instant::now() + deadline;
        let clients = (0..clients)
            .map(|_| {
                let (stop, live_step, tallies) = (stop.clone(), live_step.clone(), tallies.clone());
                let mut http = mesh.http();
                std::thread::spawn(move || {
                    for _ in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= until {
                            return;
                        }
                        let step = live_step.load(Ordering::Acquire);
                        let tally = tallies.get(step);
                        if let Some(tally) = tally {
                            tally.sent.fetch_add(1, Ordering::AcqRel);
                        }
                        let result = http.get(REVIEWS_HOST, "/", &[]);
                        let Some(tally) = tally else {
                            continue;
                        };
                        // Counted last, so `requests == sent` means every outcome is counted.
                        let _completed = CompletedOnDrop(&tally.requests);
                        match result {
                            Ok(r) if (200..300).contains(&r.status) => {
                                match r.header(VERSION_TAG) {
                                    Some(CANARY_HASH) => {
                                        tally.canary.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Some(STABLE_HASH) => {}
                                    other => tally.fail(format!(
                                        "{} response with {VERSION_TAG}: {}",
                                        r.status,
                                        other.unwrap_or("(missing)")
                                    )),
                                }
                            }
                            Ok(r) => tally.fail(format!(
                                "{} from {}",
                                r.status,
                                r.header("x-app-version").unwrap_or("envoy")
                            )),
                            Err(e) => tally.fail(format!("request failed: {e:#}")),
                        }
                    }
                })
            })
            .collect();
        UserLoad {
            stop,
            live_step,
            tallies,
            clients,
        }
    }

    /// From now on responses count for `step`.
    pub fn count_for(&self, step: usize) {
        self.live_step.store(step, Ordering::Release);
    }

    /// Stop counting (a config push is under way).
    pub fn pause_counting(&self) {
        self.live_step.store(BETWEEN_STEPS, Ordering::Release);
    }

    pub fn tally(&self, step: usize) -> Option<&StepTally> {
        self.tallies.get(step)
    }

    /// Stops every client and waits for them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients.drain(..) {
            let _ = client.join();
        }
    }
}

impl Drop for UserLoad {
    fn drop(&mut self) {
        self.stop();
    }
}
