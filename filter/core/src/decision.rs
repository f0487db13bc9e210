//! The routing decision: a pure function of (compiled config, a view of the request, a draw).

use crate::compiled::{CompiledConfig, CompiledService, KeySource};
use crate::config::{BASIS_POINTS, CANARY_SUBSET, STABLE_SUBSET};

/// Read access to the request headers the decision needs. The filter implements it over the
/// header map it read from Envoy in one host call; tests implement it over a table. Values are
/// borrowed: the request path allocates nothing per lookup.
pub trait RequestHeaders {
    /// The value of header `name` (lower-case), if present and text. For a repeated header, the
    /// first value.
    fn header(&self, name: &str) -> Option<&str>;

    /// The raw value of header `name` (lower-case), text or not. For a repeated header, the
    /// first value. The default answers [`header`](Self::header)'s text.
    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.header(name).map(str::as_bytes)
    }

    /// Calls `visit` with every raw value of header `name` (lower-case), in order, until it
    /// returns `true`. A header may be repeated: over HTTP/1.1 a client can send several
    /// `Cookie` lines, and Envoy passes them on as separate entries. The default visits the one
    /// value [`header_bytes`](Self::header_bytes) answers.
    fn visit_values<'a>(&'a self, name: &str, visit: &mut dyn FnMut(&'a [u8]) -> bool) {
        if let Some(value) = self.header_bytes(name) {
            visit(value);
        }
    }
}

/// Which DestinationRule subset a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subset {
    /// The current version.
    Stable,
    /// The version under test.
    Canary,
}

impl Subset {
    /// The value written into the decision header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => STABLE_SUBSET,
            Self::Canary => CANARY_SUBSET,
        }
    }
    /// Both subsets, in metric order.
    pub const ALL: [Subset; 2] = [Subset::Stable, Subset::Canary];
}

/// Why a request got its subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A header route matched.
    HeaderRoute,
    /// The sticky key's bucket decided.
    Sticky,
    /// A per-request weighted draw decided.
    Weight,
}

impl Reason {
    /// Metric-friendly name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderRoute => "header_route",
            Self::Sticky => "sticky",
            Self::Weight => "weight",
        }
    }
    /// All reasons, in metric order.
    pub const ALL: [Reason; 3] = [Reason::HeaderRoute, Reason::Sticky, Reason::Weight];
}

/// The outcome for a covered request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index of the service in the config.
    pub service: usize,
    /// Where the request goes.
    pub subset: Subset,
    /// Why.
    pub reason: Reason,
}

/// Decides stable or canary for a request. `None` when the `:authority` is missing or matches no
/// service: the request is not under canary (the caller strips any client-sent decision header,
/// so the VirtualService's default route, stable, applies).
///
/// Order: header routes (canary at any weight, Argo's `setHeaderRoute`), then the sticky key when
/// the request carries one, then `draw` (uniform in `0..10000`). The caller supplies the draw so
/// this function stays deterministic and testable.
pub fn decide_route(
    config: &CompiledConfig,
    authority: Option<&str>,
    headers: &impl RequestHeaders,
    draw: u32,
) -> Option<Decision> {
    let (index, service) = config.service_for_authority(authority?)?;
    let (subset, reason) = decide_for_service(service, headers, draw);
    Some(Decision {
        service: index,
        subset,
        reason,
    })
}

/// The decision for a request already known to address `service`.
pub fn decide_for_service(
    service: &CompiledService,
    headers: &impl RequestHeaders,
    draw: u32,
) -> (Subset, Reason) {
    if !service.header_routes.is_empty() {
        let forced = service.header_routes.iter().any(|route| {
            route
                .matches
                .iter()
                .all(|m| text_value(headers, &m.source).is_some_and(|v| m.matcher.matches(v)))
        });
        if forced {
            return (Subset::Canary, Reason::HeaderRoute);
        }
    }
    if let Some(source) = &service.sticky {
        // The key's bytes decide: a key that is not UTF-8 is still the same key on every
        // request.
        if let Some(key) = raw_value(headers, source).filter(|k| !k.is_empty()) {
            return (
                by_weight(
                    sticky_bucket_bytes(&service.name, key),
                    service.canary_weight,
                ),
                Reason::Sticky,
            );
        }
    }
    (by_weight(draw, service.canary_weight), Reason::Weight)
}

fn by_weight(point: u32, canary_weight: u32) -> Subset {
    if point < canary_weight {
        Subset::Canary
    } else {
        Subset::Stable
    }
}

/// The fixed bucket (`0..10000`) of a sticky key for a service. A key is on canary exactly when
/// its bucket is below the canary weight, so raising the weight only ever adds keys to canary.
/// Stable across processes, versions and architectures: FNV-1a 64 over
/// `service || 0x00 || key`, finished with the splitmix64 mixer, modulo 10000.
pub fn sticky_bucket(service: &str, key: &str) -> u32 {
    sticky_bucket_bytes(service, key.as_bytes())
}

/// [`sticky_bucket`] of a key given as bytes (a header or cookie value need not be UTF-8); the
/// same bucket for the same bytes.
pub fn sticky_bucket_bytes(service: &str, key: &[u8]) -> u32 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for b in service
        .bytes()
        .chain(std::iter::once(0u8))
        .chain(key.iter().copied())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    (mix64(h) % u64::from(BASIS_POINTS)) as u32
}

/// splitmix64's finalizer: spreads FNV's weak low bits over the whole word.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key's value as text, for matchers: a value that is not UTF-8 matches nothing.
fn text_value<'a>(headers: &'a impl RequestHeaders, source: &KeySource) -> Option<&'a str> {
    raw_value(headers, source).and_then(|v| std::str::from_utf8(v).ok())
}

/// The key's raw value. Only the cookie's own bytes count: another cookie's bytes, text or not,
/// do not hide it.
fn raw_value<'a>(headers: &'a impl RequestHeaders, source: &KeySource) -> Option<&'a [u8]> {
    match source {
        KeySource::Header(name) => headers.header_bytes(name),
        KeySource::Cookie(name) => {
            // The first occurrence wins, across lines as within one line.
            let mut found = None;
            headers.visit_values("cookie", &mut |line| {
                found = cookie_value_bytes(line, name);
                found.is_some()
            });
            found
        }
    }
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`). Envoy's HTTP/2 codec joins
/// cookie crumbs with `; `, but HTTP/1.1 `Cookie` lines stay separate headers: the decision
/// reads each of them ([`RequestHeaders::visit_values`]). Spaces and tabs around names and values are
/// ignored and quotes around a value are removed (RFC 6265). One pass over the bytes: the
/// `split`/`trim` version cost ~150 ns per request in wasm, most of the decision.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    // The slice lies within `header` and starts and ends next to ASCII bytes (or at its ends),
    // so it is valid UTF-8; `from_utf8` only confirms it.
    cookie_value_bytes(header.as_bytes(), name).and_then(|v| std::str::from_utf8(v).ok())
}

/// [`cookie_value`] over raw bytes: a `Cookie` header need not be UTF-8, and bytes that are not
/// in the pair asked for do not matter.
pub fn cookie_value_bytes<'a>(bytes: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    let mut start = 0;
    while start <= bytes.len() {
        let end = bytes
            .get(start..)?
            .iter()
            .position(|&b| b == b';')
            .map_or(bytes.len(), |i| start + i);
        let pair = bytes.get(start..end)?;
        if let Some(eq) = pair.iter().position(|&b| b == b'=') {
            let (k, v) = (pair.get(..eq)?, pair.get(eq + 1..)?);
            if trim_ows(k) == name {
                let v = trim_ows(v);
                let v = match v {
                    [b'"', inner @ .., b'"'] => inner,
                    _ => v,
                };
                return Some(v);
            }
        }
        start = end + 1;
    }
    None
}

/// `s` without leading and trailing ASCII whitespace.
fn trim_ows(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// A small, fast PRNG (SplitMix64) for the per-request draw. Seeded once per filter instance
/// from the host's entropy; no host call per request.
#[derive(Debug, Clone)]
pub struct Draws {
    state: u64,
}

impl Draws {
    /// A generator from a 64-bit seed.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A uniform draw in `0..10000` (bias below 1e-15: 2^64 mod 10000 / 2^64).
    pub fn next_point(&mut self) -> u32 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (mix64(self.state) % u64::from(BASIS_POINTS)) as u32
    }
}
