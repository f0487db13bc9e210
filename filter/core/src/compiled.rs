//! Validation and compilation of a [`PluginConfig`] into the form the request path uses.
//!
//! Everything that can be decided once is decided here: header names lower-cased, regexes
//! compiled and anchored, hosts indexed, sticky sources resolved. The request path then does
//! hash-map lookups and comparisons only.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::regex::Regex;

use crate::config::{
    is_label_value, CanaryService, FilterMode, HeaderRoute, PluginConfig, RequestMatch, StickyKey,
    StringMatch, BASIS_POINTS,
};
use crate::error::ConfigError;

/// At most this many services in one config.
pub const MAX_SERVICES: usize = 1024;
/// At most this many hosts per service.
pub const MAX_HOSTS_PER_SERVICE: usize = 64;
/// At most this many header routes per service.
pub const MAX_HEADER_ROUTES: usize = 64;
/// At most this many matches per header route.
pub const MAX_MATCHES_PER_ROUTE: usize = 16;
/// Longest regex source accepted.
pub const MAX_REGEX_LEN: usize = 1024;
/// Longest name or value accepted in any string field.
pub const MAX_STRING_LEN: usize = 1024;
/// At most this many distinct decision headers in one config (the config's `decisionHeader`
/// plus the services' own). Each costs a header lookup on every request.
pub const MAX_DECISION_HEADERS: usize = 8;

/// A validated config, ready for the request path.
#[derive(Debug, Clone)]
pub struct CompiledConfig {
    /// Client or server.
    pub mode: FilterMode,
    /// Lower-cased decision header name.
    pub decision_header: String,
    /// Every distinct decision header of the config, lower-cased: `decision_header` first,
    /// then services' own. A client-sent value of any of them is never trusted.
    pub decision_headers: Vec<String>,
    /// Whether `stable` decisions are written too.
    pub write_stable_decision: bool,
    /// Lower-cased hash header name, if any.
    pub hash_header: Option<String>,
    /// Lower-cased version header name (server mode).
    pub version_header: String,
    /// Services, in config order.
    pub services: Vec<CompiledService>,
    by_host: HashMap<String, usize, BuildHasherDefault<HostHasher>>,
}

/// The host index's hash: eight bytes at a time, multiply-rotate (the FxHash construction used
/// in rustc). The default SipHash guards against keys chosen to collide, but these keys come
/// from the operator's config, not from clients (a client's `:authority` only looks up); this
/// is several times cheaper on a 30-byte host than SipHash, and than byte-wise FNV, on every
/// request.
#[derive(Default)]
pub struct HostHasher(u64);

impl HostHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for HostHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            if let Some(dst) = w.get_mut(..rest.len()) {
                dst.copy_from_slice(rest);
            }
            // The length keeps "ab" and "ab\0" apart.
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
}

/// One service, compiled.
#[derive(Debug, Clone)]
pub struct CompiledService {
    /// The service's name.
    pub name: String,
    /// Canary share in basis points.
    pub canary_weight: u32,
    /// Index into [`CompiledConfig::decision_headers`] of the header this service's decision
    /// is written into.
    pub decision_header: usize,
    /// Stable ReplicaSet's pod-template hash.
    pub stable_hash: Option<String>,
    /// Canary ReplicaSet's pod-template hash.
    pub canary_hash: Option<String>,
    /// Routes forcing canary.
    pub header_routes: Vec<CompiledRoute>,
    /// Sticky key source.
    pub sticky: Option<KeySource>,
}

/// A header route, compiled.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// The route's name.
    pub name: String,
    /// Conditions, all of which must hold.
    pub matches: Vec<CompiledMatch>,
}

/// A condition on one header or cookie.
#[derive(Debug, Clone)]
pub struct CompiledMatch {
    /// Where the value comes from.
    pub source: KeySource,
    /// How it must match.
    pub matcher: ValueMatcher,
}

/// Where a value is read from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header, name lower-cased.
    Header(String),
    /// A cookie, name as configured.
    Cookie(String),
}

/// A compiled value matcher.
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Anchored regex.
    Regex(Regex),
}

impl ValueMatcher {
    /// Whether `value` satisfies this matcher.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }
}

impl CompiledConfig {
    /// Parses and validates a `pluginConfig` JSON document in one step.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::compile(&PluginConfig::from_json(bytes)?)
    }

    /// Validates `config` and builds the request-path form. Every error names its field.
    pub fn compile(config: &PluginConfig) -> Result<Self, ConfigError> {
        let decision_header = header_name("decisionHeader", &config.decision_header)?;
        let hash_header = match &config.hash_header {
            Some(h) => Some(header_name("hashHeader", h)?),
            None => None,
        };
        let version_header = header_name("versionHeader", &config.version_header)?;
        if hash_header.as_deref() == Some(decision_header.as_str()) {
            return Err(ConfigError::new(
                "hashHeader",
                "must differ from decisionHeader",
            ));
        }
        if config.services.len() > MAX_SERVICES {
            return Err(ConfigError::new(
                "services",
                format!(
                    "{} services, more than the limit of {MAX_SERVICES}",
                    config.services.len()
                ),
            ));
        }

        let mut decision_headers = vec![decision_header.clone()];
        let mut services = Vec::with_capacity(config.services.len());
        let mut by_host: HashMap<String, usize, BuildHasherDefault<HostHasher>> =
            HashMap::default();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, svc) in config.services.iter().enumerate() {
            // Name the entry as the JSON does: by key (the controller's form), or by index
            // when it has no usable name.
            let path = if svc.name.is_empty() {
                format!("services[{i}]")
            } else {
                format!("services[{:?}]", svc.name)
            };
            let mut compiled = compile_service(&path, svc)?;
            if let Some(own) = &svc.decision_header {
                let header_path = format!("{path}.decisionHeader");
                let own = header_name(&header_path, own)?;
                if hash_header.as_deref() == Some(own.as_str()) {
                    return Err(ConfigError::new(header_path, "must differ from hashHeader"));
                }
                compiled.decision_header = match decision_headers.iter().position(|h| *h == own) {
                    Some(index) => index,
                    None if decision_headers.len() < MAX_DECISION_HEADERS => {
                        decision_headers.push(own);
                        decision_headers.len() - 1
                    }
                    None => {
                        return Err(ConfigError::new(
                            header_path,
                            format!(
                                "more than {MAX_DECISION_HEADERS} distinct decision headers in one config"
                            ),
                        ))
                    }
                };
            }
            if let Some(first) = names.insert(svc.name.as_str(), i) {
                return Err(ConfigError::new(
                    format!("services[{i}].name"),
                    format!("\"{}\" is already the name of services[{first}]", svc.name),
                ));
            }
            for (j, host) in svc.hosts.iter().enumerate() {
                let host_path = format!("{path}.hosts[{j}]");
                let normalized = host_key(&host_path, host)?;
                if let Some(other) = by_host.insert(normalized.clone(), i) {
                    let owner = config
                        .services
                        .get(other)
                        .map(|s| s.name.as_str())
                        .unwrap_or("?");
                    let reason = if other == i {
                        format!("host \"{normalized}\" is listed twice")
                    } else {
                        format!("host \"{normalized}\" is already claimed by service \"{owner}\"")
                    };
                    return Err(ConfigError::new(host_path, reason));
                }
            }
            services.push(compiled);
        }
        Ok(Self {
            mode: config.mode,
            decision_header,
            decision_headers,
            write_stable_decision: config.write_stable_decision,
            hash_header,
            version_header,
            services,
            by_host,
        })
    }

    /// The service whose hosts include this request's `:authority` (port and case ignored).
    pub fn service_for_authority(&self, authority: &str) -> Option<(usize, &CompiledService)> {
        let host = authority_host(authority);
        let idx = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            *self.by_host.get(&host.to_ascii_lowercase())?
        } else {
            *self.by_host.get(host)?
        };
        self.services.get(idx).map(|s| (idx, s))
    }

    /// The lower-cased decision header `service` writes.
    pub fn decision_header_of(&self, service: &CompiledService) -> &str {
        self.decision_headers
            .get(service.decision_header)
            .unwrap_or(&self.decision_header)
    }

    /// How many distinct hosts are covered.
    pub fn number_of_hosts(&self) -> usize {
        self.by_host.len()
    }
}

fn compile_service(path: &str, svc: &CanaryService) -> Result<CompiledService, ConfigError> {
    non_empty(&format!("{path}.name"), &svc.name)?;
    if svc.hosts.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.hosts"),
            "must list at least one host",
        ));
    }
    if svc.hosts.len() > MAX_HOSTS_PER_SERVICE {
        return Err(ConfigError::new(
            format!("{path}.hosts"),
            format!(
                "{} hosts, more than the limit of {MAX_HOSTS_PER_SERVICE}",
                svc.hosts.len()
            ),
        ));
    }
    if svc.canary_weight > BASIS_POINTS {
        return Err(ConfigError::new(
            format!("{path}.canaryWeight"),
            format!(
                "{} is out of range: weights are basis points, 0..=10000 (10000 = 100%)",
                svc.canary_weight
            ),
        ));
    }
    let stable_hash =
        optional_label_value(&format!("{path}.stableHash"), svc.stable_hash.as_deref())?;
    let canary_hash =
        optional_label_value(&format!("{path}.canaryHash"), svc.canary_hash.as_deref())?;
    if svc.header_routes.len() > MAX_HEADER_ROUTES {
        return Err(ConfigError::new(
            format!("{path}.headerRoutes"),
            format!(
                "{} routes, more than the limit of {MAX_HEADER_ROUTES}",
                svc.header_routes.len()
            ),
        ));
    }
    let header_routes = svc
        .header_routes
        .iter()
        .enumerate()
        .map(|(i, r)| compile_route(&format!("{path}.headerRoutes[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()?;
    let sticky = match &svc.sticky {
        None => None,
        Some(StickyKey::Header(h)) => Some(KeySource::Header(header_name(
            &format!("{path}.sticky.header"),
            h,
        )?)),
        Some(StickyKey::Cookie(c)) => Some(KeySource::Cookie(cookie_name(
            &format!("{path}.sticky.cookie"),
            c,
        )?)),
    };
    Ok(CompiledService {
        name: svc.name.clone(),
        canary_weight: svc.canary_weight,
        decision_header: 0,
        stable_hash,
        canary_hash,
        header_routes,
        sticky,
    })
}

fn compile_route(path: &str, route: &HeaderRoute) -> Result<CompiledRoute, ConfigError> {
    non_empty(&format!("{path}.name"), &route.name)?;
    if route.matches.is_empty() {
        // An empty AND would match every request and silently send all traffic to canary.
        return Err(ConfigError::new(
            format!("{path}.match"),
            "must have at least one match",
        ));
    }
    if route.matches.len() > MAX_MATCHES_PER_ROUTE {
        return Err(ConfigError::new(
            format!("{path}.match"),
            format!(
                "{} matches, more than the limit of {MAX_MATCHES_PER_ROUTE}",
                route.matches.len()
            ),
        ));
    }
    let matches = route
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| compile_match(&format!("{path}.match[{i}]"), m))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CompiledRoute {
        name: route.name.clone(),
        matches,
    })
}

fn compile_match(path: &str, m: &RequestMatch) -> Result<CompiledMatch, ConfigError> {
    let source = match (&m.header, &m.cookie) {
        (Some(h), None) => KeySource::Header(header_name(&format!("{path}.header"), h)?),
        (None, Some(c)) => KeySource::Cookie(cookie_name(&format!("{path}.cookie"), c)?),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                path,
                "set either \"header\" or \"cookie\", not both",
            ))
        }
        (None, None) => return Err(ConfigError::new(path, "needs \"header\" or \"cookie\"")),
    };
    let matcher = match &m.value {
        StringMatch::Exact(s) => {
            ValueMatcher::Exact(bounded(&format!("{path}.value.exact"), s)?.to_owned())
        }
        StringMatch::Prefix(s) => {
            ValueMatcher::Prefix(bounded(&format!("{path}.value.prefix"), s)?.to_owned())
        }
        StringMatch::Regex(s) => {
            ValueMatcher::Regex(compile_regex(&format!("{path}.value.regex"), s)?)
        }
    };
    Ok(CompiledMatch { source, matcher })
}

fn compile_regex(path: &str, pattern: &str) -> Result<Regex, ConfigError> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(ConfigError::new(
            path,
            format!(
                "regex is {} bytes, longer than the limit of {MAX_REGEX_LEN}",
                pattern.len()
            ),
        ));
    }
    // Istio's VirtualService regex is a full match (RE2 via Envoy's safe_regex); do the same.
    // Regex::is_match is a full match already.
    Regex::new(pattern).map_err(|e| ConfigError::new(path, format!("invalid regex: {e}")))
}

fn non_empty<'a>(path: &str, s: &'a str) -> Result<&'a str, ConfigError> {
    if s.trim().is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    bounded(path, s)
}

fn bounded<'a>(path: &str, s: &'a str) -> Result<&'a str, ConfigError> {
    if s.len() > MAX_STRING_LEN {
        return Err(ConfigError::new(
            path,
            format!(
                "{} bytes, longer than the limit of {MAX_STRING_LEN}",
                s.len()
            ),
        ));
    }
    Ok(s)
}

/// HTTP header names are RFC 9110 tokens; Envoy stores them lower-cased. Pseudo-headers
/// (`:authority`) are not something a route decision can be written into.
fn header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    non_empty(path, name)?;
    if let Some(bad) = name.chars().find(|c| !is_token_char(*c)) {
        return Err(ConfigError::new(
            path,
            format!("\"{name}\" is not a valid header name (character {bad:?})"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn cookie_name(path: &str, name: &str) -> Result<String, ConfigError> {
    non_empty(path, name)?;
    if let Some(bad) = name.chars().find(|c| !is_token_char(*c)) {
        return Err(ConfigError::new(
            path,
            format!("\"{name}\" is not a valid cookie name (character {bad:?})"),
        ));
    }
    Ok(name.to_owned())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Kubernetes label values: at most 63 characters of `[A-Za-z0-9._-]`.
fn optional_label_value(path: &str, value: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    if v.is_empty() {
        return Ok(None);
    }
    if !is_label_value(v) {
        return Err(ConfigError::new(
            path,
            format!("\"{v}\" is not a Kubernetes label value (at most 63 of [A-Za-z0-9._-])"),
        ));
    }
    Ok(Some(v.to_owned()))
}

/// The index key of a configured host: lower-cased, no trailing dot, no port.
fn host_key(path: &str, host: &str) -> Result<String, ConfigError> {
    non_empty(path, host)?;
    if host.contains('/') || host.contains('*') || host.chars().any(char::is_whitespace) {
        return Err(ConfigError::new(
            path,
            format!("\"{host}\" is not a hostname (no scheme, path, wildcard or spaces)"),
        ));
    }
    let bare = authority_host(host);
    if bare.len() != host.trim_end_matches('.').len() {
        return Err(ConfigError::new(
            path,
            format!("\"{host}\" includes a port; list the hostname only, every port matches"),
        ));
    }
    Ok(bare.to_ascii_lowercase())
}

/// The host part of an `:authority`: port removed (`reviews:9080` -> `reviews`,
/// `[::1]:80` -> `[::1]`), trailing dot removed. Case is left to the caller.
pub fn authority_host(authority: &str) -> &str {
    let bytes = authority.as_bytes();
    let host = if bytes.first() == Some(&b'[') {
        match bytes.iter().position(|&b| b == b']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        }
    } else {
        // A port is the digits after the last ':'; scanning back over them finds that colon in
        // the same pass (this runs on every request).
        let digits = bytes
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let before = bytes.len() - digits;
        match before.checked_sub(1) {
            Some(colon) if bytes.get(colon) == Some(&b':') => {
                authority.get(..colon).unwrap_or(authority)
            }
            _ => authority,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}
