//! The `pluginConfig` contract: what a WasmPlugin carries and what the filter parses.
//!
//! This is the ONE type both sides use. The controller serializes a [`PluginConfig`] into the
//! WasmPlugin's `spec.pluginConfig`; Istio hands that object to the filter as a JSON string; the
//! filter parses it with [`PluginConfig::from_json`] and compiles it with
//! [`crate::CompiledConfig::compile`]. JSON field names are camelCase; unknown fields are refused so
//! that a typo (`canaryWieght`) is an error, not a silently ignored setting.

use serde::Serialize;

use crate::error::ConfigError;

/// Weights are in basis points: 10000 is all traffic, 1 is 0.01%.
pub const BASIS_POINTS: u32 = 10_000;

/// The request header the filter writes its decision into, unless configured otherwise.
pub const DEFAULT_DECISION_HEADER: &str = "x-canary-subset";

/// The header that carries the serving pod's `rollouts-pod-template-hash`, unless configured
/// otherwise.
pub const DEFAULT_VERSION_HEADER: &str = "x-rollouts-pod-template-hash";

/// The pod label Argo Rollouts (and our controller) put on every pod of a ReplicaSet.
pub const POD_TEMPLATE_HASH_LABEL: &str = "rollouts-pod-template-hash";

/// Whether `value` is a Kubernetes label value as the filter accepts one: 1 to 63 characters of
/// `[A-Za-z0-9._-]`. Pod-template hashes must be, in config and in node metadata; that also
/// makes them safe header values (no CR, LF, NUL or spaces).
pub fn is_label_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Value written into the decision header for the stable version.
pub const STABLE_SUBSET: &str = "stable";

/// Value written into the decision header for the canary version.
pub const CANARY_SUBSET: &str = "canary";

/// Largest `pluginConfig` accepted, in bytes. A 20-service config is ~10 KB; anything near this
/// bound is a mistake (or an attack on every sidecar's memory), not a configuration.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// The whole configuration of one filter instance (one WasmPlugin's `pluginConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    /// Which side of the connection this instance serves. `client` (default) decides stable or
    /// canary for outbound requests; `server` tags requests and responses with the serving pod's
    /// `rollouts-pod-template-hash`.
    pub mode: FilterMode,

    /// Request header the decision is written into (`stable` or `canary`). The VirtualService
    /// matches on it. Any value a client sent is overwritten (covered hosts) or removed (others).
    pub decision_header: String,

    /// Whether requests decided `stable` get the decision header too (default false). By default
    /// only `canary` is written: the VirtualService's default route already means stable, so a
    /// stable request needs no header, and most requests (all but the canary share) skip a
    /// header write and the route re-match it causes in Envoy (`make bench` measures both). A
    /// decision header sent by the client is overwritten either way, so it never chooses the
    /// version. Set true to have every routed request carry its decision upstream (for logs).
    #[serde(skip_serializing_if = "is_false")]
    pub write_stable_decision: bool,

    /// Optional request header that receives the chosen version's pod-template hash, for
    /// upstream logs. Not written when unset or when the chosen subset has no hash configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,

    /// Server mode: the header added to requests and responses with the serving pod's
    /// `rollouts-pod-template-hash` label.
    pub version_header: String,

    /// Services under canary (client mode). A request whose `:authority` matches none of their
    /// hosts passes untouched, except that a client-sent decision header is removed.
    ///
    /// In JSON this is an object keyed by service name (`{"bookinfo/reviews": {...}}`), so that
    /// in a WasmPlugin composed from several rollouts each rollout's field manager owns exactly
    /// its own key (server-side apply merges objects key by key; a list would be one atomic
    /// field). The filter also reads the older list form (`[{"name": ..., ...}]`).
    #[serde(serialize_with = "services_by_name")]
    pub services: Vec<CanaryService>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            mode: FilterMode::default(),
            decision_header: default_decision_header(),
            write_stable_decision: false,
            hash_header: None,
            version_header: default_version_header(),
            services: Vec::new(),
        }
    }
}

/// Which side of a connection a filter instance serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    /// Outbound: choose stable or canary (WasmPlugin `match.mode: CLIENT`, or a gateway).
    #[default]
    Client,
    /// Inbound: tag with the serving version (WasmPlugin `match.mode: SERVER`).
    Server,
}

/// One service under canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryService {
    /// A unique name, conventionally `<namespace>/<service>` (e.g. `bookinfo/reviews`). It seeds
    /// the sticky hash and names the metrics. In JSON it is the entry's key in `services`.
    #[serde(skip_serializing)]
    pub name: String,

    /// Hostnames this service answers to, matched against `:authority` with the port removed and
    /// case ignored. List every form clients use: `reviews`, `reviews.bookinfo`,
    /// `reviews.bookinfo.svc`, `reviews.bookinfo.svc.cluster.local`.
    pub hosts: Vec<String>,

    /// Share of requests sent to canary, in basis points (0..=10000; 1 = 0.01%). 0 sends no one
    /// except header routes; 10000 sends everyone.
    pub canary_weight: u32,

    /// `rollouts-pod-template-hash` of the stable ReplicaSet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_hash: Option<String>,

    /// `rollouts-pod-template-hash` of the canary ReplicaSet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_hash: Option<String>,

    /// Routes that force canary whatever the weight (Argo Rollouts' `setHeaderRoute`). A request
    /// matching ALL matches of ANY route goes to canary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_routes: Vec<HeaderRoute>,

    /// The request header this service's decision is written into, when it is not the
    /// config's `decisionHeader` (its VirtualService routes on another header). Every decision
    /// header of the config is a routing header: a client-sent one is removed or overwritten
    /// on every request, whichever host it addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_header: Option<String>,

    /// Where the sticky key is read from. When present on a request, the decision is a pure
    /// function of (key, service name, weight), and monotone in the weight: a user on canary at
    /// 10% is still on canary at 30%. Requests without the key get a per-request draw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyKey>,
}

/// A named set of request matches that forces canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRoute {
    /// The route's name (Argo's `setHeaderRoute.name`), for logs and metrics.
    pub name: String,
    /// All of these must match (AND).
    #[serde(rename = "match")]
    pub matches: Vec<RequestMatch>,
}

/// One condition on a request header or a cookie. Exactly one of `header` and `cookie` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMatch {
    /// Request header name (case-insensitive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Cookie name (case-sensitive, as cookies are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// How the value must match.
    pub value: StringMatch,
}

impl RequestMatch {
    /// A match on a request header.
    pub fn header(name: impl Into<String>, value: StringMatch) -> Self {
        Self {
            header: Some(name.into()),
            cookie: None,
            value,
        }
    }
    /// A match on a cookie.
    pub fn cookie(name: impl Into<String>, value: StringMatch) -> Self {
        Self {
            header: None,
            cookie: Some(name.into()),
            value,
        }
    }
}

/// How a value is matched. Serialized as `{"exact": "..."}`, `{"prefix": "..."}` or
/// `{"regex": "..."}`, as in Istio's `StringMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// The whole value equals this string.
    Exact(String),
    /// The value starts with this string.
    Prefix(String),
    /// The WHOLE value matches this regular expression (RE2-like syntax, as Istio's
    /// VirtualService regex; implicitly anchored at both ends).
    Regex(String),
}

/// Where a sticky key comes from: `{"header": "x-user-id"}` or `{"cookie": "session"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StickyKey {
    /// A request header (case-insensitive name).
    Header(String),
    /// A cookie (case-sensitive name).
    Cookie(String),
}

fn services_by_name<S: serde::Serializer>(
    services: &[CanaryService],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(services.len()))?;
    for service in services {
        map.serialize_entry(&service.name, service)?;
    }
    map.end()
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_decision_header() -> String {
    DEFAULT_DECISION_HEADER.to_owned()
}

fn default_version_header() -> String {
    DEFAULT_VERSION_HEADER.to_owned()
}

impl PluginConfig {
    /// Parses a `pluginConfig` as delivered by Istio (a JSON object, as bytes). The error names
    /// the offending field (`services[0].canaryWeight`) and why. Does not validate semantics: use
    /// [`crate::CompiledConfig::compile`] (or [`crate::CompiledConfig::from_json`]) for that.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::new(
                "(root)",
                format!(
                    "config is {} bytes, larger than the {MAX_CONFIG_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        let trimmed = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .and_then(|i| bytes.get(i));
        match trimmed {
            None => {
                return Err(ConfigError::new(
                    "(root)",
                    "config is empty; expected a JSON object",
                ))
            }
            Some(b'{') => {}
            Some(_) => return Err(ConfigError::new("(root)", "config must be a JSON object")),
        }
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new("(root)", strip_serde_position(&e.to_string())))?;
        Self::from_value(&value)
    }

    /// Reads a `pluginConfig` already parsed as JSON (e.g. from a WasmPlugin object). Unknown
    /// fields are refused; every error names its field.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ConfigError> {
        crate::decode::plugin_config(value)
    }

    /// Serializes to the JSON object that goes into a WasmPlugin's `pluginConfig`.
    pub fn to_json_value(&self) -> serde_json::Value {
        // Serializing plain structs of strings and integers into a Value cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// serde_json appends " at line 1 column 42"; the field path says more and stays stable.
fn strip_serde_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message.get(..i).unwrap_or(message).to_owned(),
        None => message.to_owned(),
    }
}
