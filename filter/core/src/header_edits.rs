//! What the filter writes into and removes from the headers, as data.
//!
//! The proxy-wasm glue (`filter/plugin`, the only `unsafe` code) reads the request headers,
//! calls [`route_client_request`] or [`server_edits`], and applies the [`HeaderEdit`]s it gets
//! back, one host call each. The rules live here so they are tested as tables, natively and
//! under wasm, without an Envoy. Nothing here allocates: edits borrow their names and values
//! from the compiled config, and a request has at most one per decision header, plus the hash header.
//!
//! Client mode, for a request whose `:authority` is a covered host:
//! - the decision header is SET to `canary` for a canary decision, and to `stable` for a stable
//!   one when `writeStableDecision` is on or the client sent a decision header (overwritten, so
//!   a client never chooses its version); otherwise it is left alone (absent: the default route
//!   is stable);
//! - the hash header (if configured) is SET to the chosen subset's hash, or REMOVED when that
//!   subset has no hash and the client sent one.
//!
//! Client mode, any other host: a client-sent decision header and hash header are REMOVED, so
//! they cannot reach a VirtualService match or an upstream's logs. A config may name several
//! decision headers (a service can have its own); every one the client sent is removed, except
//! the covered service's own, which is overwritten as above. A header that is not there is
//! not removed: that would cost a host call for nothing.
//!
//! When the host's header map could not be read, nothing is decided (the request goes on to the
//! default route, stable) and every header the filter owns is treated as client-sent.
//!
//! Server mode: the version header is SET, on the request and on the response, to the pod's
//! `rollouts-pod-template-hash` label ([`version_tag`]). Without a valid label the request is
//! served untagged: the version header is REMOVED, so a forged one reaches neither the app nor
//! the client.

use std::fmt;

use crate::compiled::{CompiledConfig, MAX_DECISION_HEADERS};
use crate::config::{is_label_value, POD_TEMPLATE_HASH_LABEL};
use crate::decision::{decide_for_service, Decision, RequestHeaders, Subset};
use crate::header_map::SerializedHeaders;

/// One change to a header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    /// Replace every value of `name` with `value` (adds the header if absent).
    Set {
        /// Lower-case header name.
        name: &'a str,
        /// The value: ASCII the filter checked ([`Subset::as_str`], a validated hash).
        value: &'a str,
    },
    /// Remove every value of `name`.
    Remove {
        /// Lower-case header name.
        name: &'a str,
    },
}

/// The edits for one request, in the order they are to be applied: one per decision header
/// (set, or a client-sent one removed) and the hash header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderEdits<'a> {
    slots: [Option<HeaderEdit<'a>>; MAX_DECISION_HEADERS + 1],
}

impl<'a> HeaderEdits<'a> {
    fn push(&mut self, edit: HeaderEdit<'a>) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.is_none()) {
            *slot = Some(edit);
        }
    }

    /// The edits, in order.
    pub fn iter(&self) -> impl Iterator<Item = HeaderEdit<'a>> + '_ {
        self.slots.iter().flatten().copied()
    }

    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }
}

/// What the client filter does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRouting<'a> {
    /// The decision, when the request addresses a covered host; the filter counts it.
    pub decision: Option<Decision>,
    /// The header edits to make.
    pub edits: HeaderEdits<'a>,
}

/// The client-mode rules (see the module documentation) for one request. `headers` is the
/// request's header map, `None` when the host did not return a well-formed one. `draw` is
/// called once, and only for a covered host: it supplies the uniform point in `0..10000` a
/// weighted decision uses.
pub fn route_client_request<'a>(
    config: &'a CompiledConfig,
    headers: Option<SerializedHeaders<'_>>,
    draw: impl FnOnce() -> u32,
) -> ClientRouting<'a> {
    // Presence, not a text value: a client-sent header that is not UTF-8 must go as well.
    let client_sent = |name: &str| headers.is_none_or(|h| h.contains(name));
    let view = headers.unwrap_or(SerializedHeaders::EMPTY);
    let mut edits = HeaderEdits::default();
    let covered = view
        .header(":authority")
        .and_then(|authority| config.service_for_authority(authority));
    // Decision headers other than the one this request's service writes: a client-sent value
    // must not reach a VirtualService match (of this host or another), so it goes.
    let own = covered.map(|(_, service)| config.decision_header_of(service));
    for name in &config.decision_headers {
        if Some(name.as_str()) != own && client_sent(name) {
            edits.push(HeaderEdit::Remove { name });
        }
    }
    let Some((index, service)) = covered else {
        if let Some(name) = config.hash_header.as_deref().filter(|h| client_sent(h)) {
            edits.push(HeaderEdit::Remove { name });
        }
        return ClientRouting {
            decision: None,
            edits,
        };
    };
    let (subset, reason) = decide_for_service(service, &view, draw());
    let decision_header = config.decision_header_of(service);
    if subset == Subset::Canary || config.write_stable_decision || client_sent(decision_header) {
        edits.push(HeaderEdit::Set {
            name: decision_header,
            value: subset.as_str(),
        });
    }
    if let Some(name) = config.hash_header.as_deref() {
        let hash = match subset {
            Subset::Stable => service.stable_hash.as_deref(),
            Subset::Canary => service.canary_hash.as_deref(),
        };
        match hash {
            Some(value) => edits.push(HeaderEdit::Set { name, value }),
            None if client_sent(name) => edits.push(HeaderEdit::Remove { name }),
            None => {}
        }
    }
    ClientRouting {
        decision: Some(Decision {
            service: index,
            subset,
            reason,
        }),
        edits,
    }
}

/// Why a server-mode filter does not tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionTagError {
    /// Node metadata `LABELS` has no (or an empty) `rollouts-pod-template-hash`.
    Missing,
    /// The label is there but is not a Kubernetes label value, so not a value the filter
    /// writes into a header (it could hold a CR, LF or NUL). The value, lossily decoded.
    Invalid(String),
}

impl fmt::Display for VersionTagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => write!(
                f,
                "no {POD_TEMPLATE_HASH_LABEL} label in node metadata LABELS"
            ),
            Self::Invalid(value) => write!(
                f,
                "the {POD_TEMPLATE_HASH_LABEL} label in node metadata LABELS, {value:?}, is not a \
                 Kubernetes label value (at most 63 of [A-Za-z0-9._-])"
            ),
        }
    }
}

impl std::error::Error for VersionTagError {}

/// The server-mode version tag from the pod's `rollouts-pod-template-hash` label as read from
/// node metadata (`None`: the property is absent). Read once per config.
pub fn version_tag(label: Option<&[u8]>) -> Result<&str, VersionTagError> {
    let label = label
        .filter(|l| !l.is_empty())
        .ok_or(VersionTagError::Missing)?;
    match std::str::from_utf8(label) {
        Ok(tag) if is_label_value(tag) => Ok(tag),
        _ => Err(VersionTagError::Invalid(
            String::from_utf8_lossy(label).into_owned(),
        )),
    }
}

/// The server-mode edits, the same for the request and the response: the version header set to
/// the tag, or removed without one. The header is the filter's either way: a value the client
/// (or the app) put there must not pass for this pod's version.
pub fn server_edits<'a>(config: &'a CompiledConfig, tag: Option<&'a str>) -> HeaderEdits<'a> {
    let name = config.version_header.as_str();
    let mut edits = HeaderEdits::default();
    edits.push(match tag {
        Some(value) => HeaderEdit::Set { name, value },
        None => HeaderEdit::Remove { name },
    });
    edits
}
