//! proxy-wasm glue: it reads what the host has, asks [`canary_core::header_edits`] what to
//! change, and applies those edits. Host calls per request are the cost of this filter (each
//! crosses the V8 boundary, and each header value returned crosses it again to allocate guest
//! memory), so the request path makes only the calls the decision needs:
//!
//! client mode, covered host: ONE read of the whole request header map (`make bench` measured it
//! cheaper than a read per header from the second header on), looked up in place without
//! copying; one write of the decision header for a canary decision (or for any decision when
//! the client sent one, or with `writeStableDecision`), plus the hash header if configured.
//! Decision counters are added up in the guest and published to Envoy once a second
//! (`on_tick`) and when the plugin instance ends.
//!
//! Config pushes: Envoy keeps one VM per thread across pushes and makes a new root context in
//! it for each config. Counter ids are therefore remembered per VM ([`METRIC_IDS`]): Envoy
//! allocates a new id, map entry and stat-name storage on EVERY `define_metric` call, even for
//! a name it already has, so defining each counter again on each push grew its memory with the
//! number of services times the number of pushes.
//! client mode, other host: the header map read, and a removal of the decision (and hash) header
//! only when the client sent one.
//! server mode: one request header write, one response header write (removals without a
//! valid pod-template-hash label).
//!
//! `make wasm` exports only the callbacks implemented here (`filter/prune_exports.py`, KEEP):
//! Envoy then skips `proxy_on_log`, `proxy_on_response_body` and the others on every request.
//! A callback implemented here later must be added to KEEP, or the host never calls it.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::Duration;

use canary_core::config::BASIS_POINTS;
use canary_core::decision::{Draws, Reason, Subset};
use canary_core::header_edits::{
    route_client_request, server_edits, version_tag, HeaderEdit, HeaderEdits,
};
use canary_core::header_map::SerializedHeaders;
use canary_core::metrics;
use canary_core::{CompiledConfig, FilterMode};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

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
    /// Decisions not yet added to `decision_counters`, same layout. An `increment_metric` per
    /// request was one host call in ~5 of the request path; a flush per second is invisible to
    /// Prometheus (it scrapes every 15 s or more).
    pending_decisions: RefCell<Vec<u64>>,
    /// Server mode: this pod's `rollouts-pod-template-hash`, read and checked once
    /// ([`version_tag`]).
    pod_hash: Option<String>,
    draws: RefCell<Draws>,
}

/// How often counted decisions are published to Envoy's counters.
const DECISION_FLUSH_PERIOD: Duration = Duration::from_secs(1);

impl Shared {
    fn count_decision(&self, index: usize) {
        if let Ok(mut pending) = self.pending_decisions.try_borrow_mut() {
            if let Some(n) = pending.get_mut(index) {
                *n += 1;
            }
        }
    }

    fn flush_decisions(&self) {
        let Ok(mut pending) = self.pending_decisions.try_borrow_mut() else {
            return;
        };
        for (n, id) in pending.iter_mut().zip(&self.decision_counters) {
            if *n > 0 {
                if let Some(id) = id {
                    let _ = hostcalls::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
                }
                *n = 0;
            }
        }
    }
}

impl Drop for Shared {
    /// The last holder goes away when a new config replaces this instance (the root drops it, or
    /// the last in-flight request does): publish what it counted since the last tick.
    fn drop(&mut self) {
        self.flush_decisions();
    }
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

impl Context for CanaryRoot {
    /// This config is being replaced or removed: publish what it counted and stop its tick
    /// (a retired config has nothing more to publish).
    fn on_done(&mut self) -> bool {
        if let Some(shared) = &self.shared {
            shared.flush_decisions();
            if shared.config.mode == FilterMode::Client {
                let _ = hostcalls::set_tick_period(Duration::ZERO);
            }
        }
        true
    }
}

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
                let label = self.get_property(LABEL_PATH.to_vec());
                match version_tag(label.as_deref()) {
                    Ok(tag) => Some(tag.to_owned()),
                    Err(e) => {
                        // Serve untagged rather than refuse the config: the tag is for
                        // observation; routing does not depend on it.
                        log(
                            LogLevel::Warn,
                            &format!("{e}; requests and responses will not be tagged"),
                        );
                        None
                    }
                }
            }
            FilterMode::Client => None,
        };
        let decision_counters = define_decision_counters(&config);
        if config.mode == FilterMode::Client {
            let _ = hostcalls::set_tick_period(DECISION_FLUSH_PERIOD);
        }
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
            pending_decisions: RefCell::new(vec![0; decision_counters.len()]),
            decision_counters,
            pod_hash,
            draws: RefCell::new(Draws::new(seed)),
        }));
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            shared.flush_decisions();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(CanaryRequest { shared }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

thread_local! {
    /// Counter ids this VM has defined, by name. Ids belong to the VM (Envoy's `Wasm` object),
    /// not to a root context, so every config pushed to this VM reuses them.
    static METRIC_IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

/// The id of counter `name`, defined in Envoy only the first time this VM asks for it. A
/// failed definition is not remembered (the next call tries again).
fn counter_id(name: &str) -> Option<u32> {
    METRIC_IDS.with(|ids| {
        let mut ids = ids.try_borrow_mut().ok()?;
        if let Some(id) = ids.get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(MetricType::Counter, name).ok()?;
        ids.insert(name.to_owned(), id);
        Some(id)
    })
}

fn define_decision_counters(config: &CompiledConfig) -> Vec<Option<u32>> {
    let mut ids = Vec::with_capacity(config.services.len() * 6);
    for svc in &config.services {
        for subset in Subset::ALL {
            for reason in Reason::ALL {
                ids.push(counter_id(&metrics::decision_counter(
                    &svc.name, subset, reason,
                )));
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
    if let Some(id) = counter_id(name) {
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

/// The request's headers, read with one host call into the buffer the host allocates in guest
/// memory, and looked up in place ([`SerializedHeaders`]): no copy per header. Names arrive
/// lower-case from Envoy, as the compiled config's names are.
struct RequestHeaderMap {
    /// The host's buffer (allocated by the SDK's `proxy_on_memory_allocate`, freed on drop);
    /// `None` when the read failed.
    buf: Option<Vec<u8>>,
}

#[link(wasm_import_module = "env")]
extern "C" {
    /// The ABI call behind the SDK's `get_map_bytes`, which copies every name and value into
    /// owned strings (and panics on an unexpected status). Integers, not the SDK's enums: a value
    /// the host returns outside the enum must not be undefined behaviour.
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// `MapType::HttpRequestHeaders` and `Status::Ok` in the proxy-wasm ABI.
const REQUEST_HEADERS: u32 = 0;
const STATUS_OK: u32 = 0;

impl RequestHeaderMap {
    #[allow(unsafe_code)]
    fn read() -> Self {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer it obtained from `proxy_on_memory_allocate(size)`,
        // which allocates exactly `size` bytes as a boxed slice (capacity == size), so taking it
        // back as a Vec of that length and capacity frees it with the same layout; the SDK's own
        // reader does the same.
        let status = unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) };
        let buf = match (status, data.is_null()) {
            // SAFETY: see above; `data` is non-null and owned by us from here on.
            (STATUS_OK, false) => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
            // An empty map comes back as no buffer.
            (STATUS_OK, true) => Some(Vec::new()),
            _ => None,
        };
        Self { buf }
    }

    /// The headers, or `None` if the host did not answer with a well-formed map.
    fn view(&self) -> Option<SerializedHeaders<'_>> {
        SerializedHeaders::parse(self.buf.as_deref()?)
    }
}

impl HttpContext for CanaryRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.shared.config.mode {
            FilterMode::Client => self.route_request(),
            FilterMode::Server => {
                let edits = server_edits(&self.shared.config, self.shared.pod_hash.as_deref());
                apply(edits, MapType::HttpRequestHeaders);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.shared.config.mode == FilterMode::Server {
            let edits = server_edits(&self.shared.config, self.shared.pod_hash.as_deref());
            apply(edits, MapType::HttpResponseHeaders);
        }
        Action::Continue
    }
}

impl CanaryRequest {
    fn route_request(&self) {
        let shared = &self.shared;
        let map = RequestHeaderMap::read();
        let routing = route_client_request(&shared.config, map.view(), || {
            // The borrow cannot fail (one thread, no re-entry); if it ever did, the last point
            // is canary only at weight 100%, so the fallback leans to stable.
            shared
                .draws
                .try_borrow_mut()
                .map_or(BASIS_POINTS - 1, |mut draws| draws.next_point())
        });
        apply(routing.edits, MapType::HttpRequestHeaders);
        if let Some(d) = routing.decision {
            shared.count_decision(counter_index(d.service, d.subset, d.reason));
        }
    }
}

/// One host call per edit. (The SDK returns `Ok` or aborts the VM on any other status, as
/// the `set_http_*_header` methods did before; there is no error to handle here.)
fn apply(edits: HeaderEdits<'_>, map: MapType) {
    for edit in edits.iter() {
        let _ = match edit {
            HeaderEdit::Set { name, value } => hostcalls::set_map_value(map, name, Some(value)),
            HeaderEdit::Remove { name } => hostcalls::set_map_value(map, name, None),
        };
    }
}
