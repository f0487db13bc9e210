//! proxy-wasm glue. Host calls per request are the cost of this filter (each crosses the V8
//! boundary), so the request path makes only the calls the decision needs:
//!
//! client mode, covered host: `:authority`, then only the headers the service's routes and sticky
//! key ask for (each at most once), one write of the decision header (plus the hash header if
//! configured), one counter increment.
//! client mode, other host: `:authority`, one removal of the decision header.
//! server mode: one request header write, one response header write.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;

use canary_core::decision::{decide_for_service, Draws, Reason, RequestHeaders, Subset};
use canary_core::metrics;
use canary_core::{CompiledConfig, FilterMode};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        // With panic=abort the VM dies after this; Envoy then fails the filter open or closed per
        // its fail_open setting. This line is the only trace, so make it count.
        let _ = hostcalls::log(LogLevel::Critical, &format!("panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CanaryRoot::default()) });
}}

/// What every HTTP context of one configured plugin instance shares.
struct Shared {
    config: CompiledConfig,
    /// `[service][subset][reason]` counter ids, flattened.
    decision_counters: Vec<Option<u32>>,
    /// Server mode: this pod's `rollouts-pod-template-hash`, read once.
    pod_hash: Option<String>,
    draws: RefCell<Draws>,
}

const LABEL_PATH: [&str; 5] = [
    "xds",
    "node",
    "metadata",
    "LABELS",
    canary_core::config::POD_TEMPLATE_HASH_LABEL,
];

#[derive(Default)]
struct CanaryRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for CanaryRoot {}

impl RootContext for CanaryRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let config = match CompiledConfig::from_json(bytes) {
            Ok(config) => config,
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("rejected pluginConfig: {e}; keeping the previous config"),
                );
                count(metrics::CONFIG_REJECTED);
                return false;
            }
        };
        let pod_hash = match config.mode {
            FilterMode::Server => {
                let hash = self
                    .get_property(LABEL_PATH.to_vec())
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|s| !s.is_empty());
                if hash.is_none() {
                    log(
                        LogLevel::Warn,
                        "no rollouts-pod-template-hash label in node metadata LABELS; responses will not be tagged",
                    );
                }
                hash
            }
            FilterMode::Client => None,
        };
        let decision_counters = define_decision_counters(&config);
        let seed = RandomState::new().hash_one(hostcalls::get_current_time().ok());
        log(
            LogLevel::Info,
            &format!(
                "config accepted: mode={:?}, {} services, {} hosts{}",
                config.mode,
                config.services.len(),
                config.number_of_hosts(),
                pod_hash
                    .as_deref()
                    .map(|h| format!(", pod hash {h}"))
                    .unwrap_or_default()
            ),
        );
        count(metrics::CONFIG_ACCEPTED);
        self.shared = Some(Rc::new(Shared {
            config,
            decision_counters,
            pod_hash,
            draws: RefCell::new(Draws::new(seed)),
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(CanaryRequest { shared }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn define_decision_counters(config: &CompiledConfig) -> Vec<Option<u32>> {
    let mut ids = Vec::with_capacity(config.services.len() * 6);
    for svc in &config.services {
        for subset in Subset::ALL {
            for reason in Reason::ALL {
                let name = metrics::decision_counter(&svc.name, subset, reason);
                ids.push(hostcalls::define_metric(MetricType::Counter, &name).ok());
            }
        }
    }
    ids
}

fn counter_index(service: usize, subset: Subset, reason: Reason) -> usize {
    let s = match subset {
        Subset::Stable => 0,
        Subset::Canary => 1,
    };
    let r = match reason {
        Reason::HeaderRoute => 0,
        Reason::Sticky => 1,
        Reason::Weight => 2,
    };
    service * 6 + s * 3 + r
}

fn count(name: &str) {
    if let Ok(id) = hostcalls::define_metric(MetricType::Counter, name) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

struct CanaryRequest {
    shared: Rc<Shared>,
}

impl Context for CanaryRequest {}

/// Header reads for the decision, straight to the host.
struct HostHeaders<'a>(&'a CanaryRequest);

impl RequestHeaders for HostHeaders<'_> {
    fn header(&mut self, name: &str) -> Option<String> {
        self.0.get_http_request_header(name)
    }
}

impl HttpContext for CanaryRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.shared.config.mode {
            FilterMode::Client => self.route_request(),
            FilterMode::Server => {
                if let Some(hash) = &self.shared.pod_hash {
                    self.set_http_request_header(&self.shared.config.version_header, Some(hash));
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.shared.config.mode == FilterMode::Server {
            if let Some(hash) = &self.shared.pod_hash {
                self.set_http_response_header(&self.shared.config.version_header, Some(hash));
            }
        }
        Action::Continue
    }
}

impl CanaryRequest {
    fn route_request(&self) {
        let config = &self.shared.config;
        let service = self
            .get_http_request_header(":authority")
            .and_then(|authority| config.service_for_authority(&authority).map(|(i, _)| i));
        let Some((index, service)) = service.and_then(|i| config.services.get(i).map(|s| (i, s)))
        else {
            // Not under canary: a client-sent decision header must not reach the VirtualService.
            self.set_http_request_header(&config.decision_header, None);
            if let Some(h) = &config.hash_header {
                self.set_http_request_header(h, None);
            }
            return;
        };
        let draw = self.shared.draws.borrow_mut().next_point();
        let (subset, reason) = decide_for_service(service, &mut HostHeaders(self), draw);
        self.set_http_request_header(&config.decision_header, Some(subset.as_str()));
        if let Some(h) = &config.hash_header {
            let hash = match subset {
                Subset::Stable => service.stable_hash.as_deref(),
                Subset::Canary => service.canary_hash.as_deref(),
            };
            self.set_http_request_header(h, hash);
        }
        if let Some(Some(id)) = self
            .shared
            .decision_counters
            .get(counter_index(index, subset, reason))
        {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}
