//! A borrowed view of a header map in the proxy-wasm wire format, as the host returns it from
//! `proxy_get_header_map_pairs`:
//!
//! ```text
//! u32 n | n × (u32 name_len, u32 value_len) | name_0 \0 value_0 \0 name_1 \0 value_1 \0 ...
//! ```
//!
//! (all integers little-endian). The SDK's own reader copies every name and value into a fresh
//! `String`/`Vec` (two allocations per header, ~20 for a browser request) only for the filter to
//! look at four of them and drop them all; `make bench` measured that at about a third of the
//! filter's cost per request. This view validates the layout once and then answers lookups from
//! the host's buffer without allocating.
//!
//! A buffer that does not follow the layout (truncated, lengths past the end) is treated as
//! holding no headers: the decision then sends the request to stable, which is the safe side.

use crate::decision::RequestHeaders;

/// Bytes taken by the count and by each pair's two lengths.
const COUNT_LEN: usize = 4;
const PAIR_LEN: usize = 8;

/// Headers read in one host call, borrowed from the buffer the host filled.
#[derive(Debug, Clone, Copy)]
pub struct SerializedHeaders<'a> {
    /// The length table: `count` pairs of (name_len, value_len).
    lengths: &'a [u8],
    /// The names and values, each followed by a NUL.
    data: &'a [u8],
}

impl<'a> SerializedHeaders<'a> {
    /// A view with no headers.
    pub const EMPTY: SerializedHeaders<'static> = SerializedHeaders {
        lengths: &[],
        data: &[],
    };

    /// Checks the layout of `buf`; a malformed buffer gives `None`. An empty buffer is an empty
    /// map (the host returns no buffer for a map with no entries).
    pub fn parse(buf: &'a [u8]) -> Option<Self> {
        if buf.is_empty() {
            return Some(SerializedHeaders {
                lengths: &[],
                data: &[],
            });
        }
        let count = read_u32(buf, 0)? as usize;
        let table_end = count.checked_mul(PAIR_LEN)?.checked_add(COUNT_LEN)?;
        let lengths = buf.get(COUNT_LEN..table_end)?;
        let data = buf.get(table_end..)?;
        // Every name and value with its NUL must fit; checked once so lookups cannot run past
        // the end.
        let mut needed: usize = 0;
        for pair in lengths.chunks_exact(PAIR_LEN) {
            let name = read_u32(pair, 0)? as usize;
            let value = read_u32(pair, 4)? as usize;
            needed = needed
                .checked_add(name)?
                .checked_add(value)?
                .checked_add(2)?;
        }
        if needed > data.len() {
            return None;
        }
        Some(SerializedHeaders { lengths, data })
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.lengths.len() / PAIR_LEN
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The headers in order, as (name, raw value).
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let data = self.data;
        let mut at = 0usize;
        self.lengths.chunks_exact(PAIR_LEN).map_while(move |pair| {
            let name_len = read_u32(pair, 0)? as usize;
            let value_len = read_u32(pair, 4)? as usize;
            let name = data.get(at..at + name_len)?;
            at += name_len + 1;
            let value = data.get(at..at + value_len)?;
            at += value_len + 1;
            Some((name, value))
        })
    }

    /// The raw value of the first header called `name` (names arrive lower-case from Envoy).
    /// A plain loop rather than `iter().find(..)`: the filter is built for size, and this runs
    /// several times per request (measured 2x faster in V8 at `opt-level = "z"`).
    pub fn value(&self, name: &str) -> Option<&'a [u8]> {
        let mut found = None;
        self.visit_raw(name, &mut |value| {
            found = Some(value);
            true
        });
        found
    }

    /// Calls `visit` with the raw value of every header called `name`, in order, until it
    /// returns `true`.
    pub fn visit_raw(&self, name: &str, visit: &mut dyn FnMut(&'a [u8]) -> bool) {
        let name = name.as_bytes();
        let mut at = 0usize;
        let mut table = self.lengths;
        while let Some((pair, rest)) = table.split_first_chunk::<PAIR_LEN>() {
            let [n0, n1, n2, n3, v0, v1, v2, v3] = *pair;
            let name_len = u32::from_le_bytes([n0, n1, n2, n3]) as usize;
            let value_len = u32::from_le_bytes([v0, v1, v2, v3]) as usize;
            // `parse` checked that every name and value lies inside `data`.
            let value_at = at + name_len + 1;
            if name_len == name.len() && self.data.get(at..at + name_len) == Some(name) {
                if let Some(value) = self.data.get(value_at..value_at + value_len) {
                    if visit(value) {
                        return;
                    }
                }
            }
            at = value_at + value_len + 1;
            table = rest;
        }
    }

    /// Whether a header called `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.value(name).is_some()
    }
}

impl RequestHeaders for SerializedHeaders<'_> {
    /// The first value, as Envoy's single-header read answers for a repeated header. A value that
    /// is not UTF-8 reads as absent here, so no text rule matches it; a sticky key is read as
    /// bytes ([`RequestHeaders::header_bytes`]) and still decides.
    fn header(&self, name: &str) -> Option<&str> {
        self.value(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.value(name)
    }

    fn visit_values<'a>(&'a self, name: &str, visit: &mut dyn FnMut(&'a [u8]) -> bool) {
        self.visit_raw(name, visit);
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let (bytes, _) = buf.get(at..)?.split_first_chunk::<4>()?;
    Some(u32::from_le_bytes(*bytes))
}

/// Serializes pairs in the host's layout. The filter never writes header maps; this is the
/// reference the tests (and the wasm-bindgen tests) build their input with.
pub fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Adversarial buffers against a reference decoder: tests/header_map_buffers.rs.

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn sample() -> Vec<u8> {
        serialize(&[
            (":authority", b"reviews.bookinfo.svc.cluster.local"),
            (":path", b"/reviews/0"),
            ("cookie", b"session=4f2a9c; canary=always"),
            ("x-bin", b"\xff\xfe"),
            ("x-empty", b""),
            ("cookie", b"second=1"),
        ])
    }

    #[test]
    fn finds_values_by_name() {
        let buf = sample();
        let h = SerializedHeaders::parse(&buf).expect("well formed");
        assert_eq!(h.len(), 6);
        assert_eq!(
            h.header(":authority"),
            Some("reviews.bookinfo.svc.cluster.local")
        );
        assert_eq!(h.header(":path"), Some("/reviews/0"));
        assert_eq!(h.header("x-empty"), Some(""));
        assert_eq!(h.header("x-missing"), None);
        assert!(h.contains("x-empty"));
        assert!(!h.contains("x-missing"));
    }

    #[test]
    fn a_repeated_header_answers_with_its_first_value() {
        let buf = sample();
        let h = SerializedHeaders::parse(&buf).expect("well formed");
        assert_eq!(h.header("cookie"), Some("session=4f2a9c; canary=always"));
    }

    #[test]
    fn every_value_of_a_repeated_header_is_visited_in_order() {
        let buf = sample();
        let h = SerializedHeaders::parse(&buf).expect("well formed");
        let mut seen = Vec::new();
        h.visit_values("cookie", &mut |v| {
            seen.push(v);
            false
        });
        assert_eq!(seen, [&b"session=4f2a9c; canary=always"[..], b"second=1"]);
        let mut first = Vec::new();
        h.visit_values("cookie", &mut |v| {
            first.push(v);
            true
        });
        assert_eq!(first, [&b"session=4f2a9c; canary=always"[..]]);
    }

    #[test]
    fn a_value_that_is_not_utf8_is_present_but_reads_as_absent() {
        let buf = sample();
        let h = SerializedHeaders::parse(&buf).expect("well formed");
        assert!(h.contains("x-bin"));
        assert_eq!(h.value("x-bin"), Some(&b"\xff\xfe"[..]));
        assert_eq!(h.header("x-bin"), None);
    }

    #[test]
    fn iterates_in_order() {
        let buf = sample();
        let h = SerializedHeaders::parse(&buf).expect("well formed");
        let names: Vec<&[u8]> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                &b":authority"[..],
                b":path",
                b"cookie",
                b"x-bin",
                b"x-empty",
                b"cookie"
            ]
        );
    }

    #[test]
    fn empty_buffer_is_an_empty_map() {
        let h = SerializedHeaders::parse(&[]).expect("empty is valid");
        assert!(h.is_empty());
        assert_eq!(h.header(":authority"), None);
        let zero = serialize(&[]);
        assert!(SerializedHeaders::parse(&zero)
            .expect("zero pairs")
            .is_empty());
        assert!(SerializedHeaders::EMPTY.is_empty());
    }

    #[test]
    fn every_truncation_of_a_valid_buffer_is_refused_not_misread() {
        let buf = sample();
        for cut in 1..buf.len() {
            // Cutting only the final NUL still leaves every byte a lookup reads, but the layout
            // promises it, so a missing one means the buffer is not what we think.
            assert!(
                SerializedHeaders::parse(&buf[..cut]).is_none(),
                "truncated at {cut} of {} was accepted",
                buf.len()
            );
        }
    }

    #[test]
    fn lengths_past_the_end_or_overflowing_are_refused() {
        let mut huge_count = sample();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(SerializedHeaders::parse(&huge_count).is_none());

        let mut huge_value = sample();
        huge_value[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(SerializedHeaders::parse(&huge_value).is_none());

        assert!(SerializedHeaders::parse(&[1, 0, 0]).is_none());
    }
}
