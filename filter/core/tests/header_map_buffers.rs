//! The in-place header-map reader (`SerializedHeaders`) against adversarial buffers. The buffer
//! comes from the host, and the filter reads it on every request: whatever its bytes, reading it
//! must not panic (a panic aborts the VM, failing requests for everyone), and on a well-formed
//! buffer it must answer exactly what a plain decoder answers.
//!
//! The buffers come from a seeded generator (so a failure names a reproducible case), built
//! around the ways a buffer goes wrong: truncation, counts and lengths that overflow or point
//! past the end, huge counts, zero-length names and values, random bytes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::type_complexity
)]

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use canary_core::decision::{mix64, RequestHeaders};
use canary_core::header_map::{serialize, SerializedHeaders};

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The layout read the obvious way, with 64-bit arithmetic (no overflow on any target) and
/// owned copies: `u32 n | n x (u32 name_len, u32 value_len) | name \0 value \0 ...`. A buffer
/// whose names and values (each with its NUL) do not all fit is malformed; bytes after them are
/// ignored. An empty buffer is an empty map.
fn reference(buf: &[u8]) -> Option<Pairs> {
    if buf.is_empty() {
        return Some(Vec::new());
    }
    let len = buf.len() as u64;
    let u32_at = |at: u64| -> Option<u64> {
        let at = usize::try_from(at).ok()?;
        let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u64::from(u32::from_le_bytes(bytes)))
    };
    let count = u32_at(0)?;
    if 4 + 8 * count > len {
        return None;
    }
    let mut pos = 4 + 8 * count;
    let mut pairs = Vec::new();
    for i in 0..count {
        let name_len = u32_at(4 + 8 * i)?;
        let value_len = u32_at(8 + 8 * i)?;
        if pos + name_len + 1 + value_len + 1 > len {
            return None;
        }
        let slice = |from: u64, n: u64| buf[from as usize..(from + n) as usize].to_vec();
        let name = slice(pos, name_len);
        let value = slice(pos + name_len + 1, value_len);
        pos += name_len + value_len + 2;
        pairs.push((name, value));
    }
    Some(pairs)
}

/// A splitmix64 stream: the same cases on every run and every target.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, max_len: u64) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
    /// A name from a small pool, so lookups hit repeated and absent names too.
    fn name(&mut self) -> Vec<u8> {
        const NAMES: [&[u8]; 7] = [
            b":authority",
            b"cookie",
            b"x-canary-subset",
            b"",
            b"a",
            b"x-\xffbin",
            b"x-canary-subset-longer",
        ];
        NAMES[self.below(NAMES.len() as u64) as usize].to_vec()
    }
    fn pairs(&mut self) -> Pairs {
        (0..self.below(6))
            .map(|_| (self.name(), self.bytes(12)))
            .collect()
    }
}

/// The layout written by hand (names may be any bytes, which `serialize` does not take).
fn encode(pairs: &Pairs) -> Vec<u8> {
    let mut buf = (pairs.len() as u32).to_le_bytes().to_vec();
    for (n, v) in pairs {
        buf.extend_from_slice(&(n.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        buf.extend_from_slice(n);
        buf.push(0);
        buf.extend_from_slice(v);
        buf.push(0);
    }
    buf
}

/// One adversarial change to a well-formed buffer.
fn mutate(g: &mut Gen, mut buf: Vec<u8>) -> Vec<u8> {
    let put_u32 = |buf: &mut Vec<u8>, at: usize, v: u32| {
        if let Some(dst) = buf.get_mut(at..at + 4) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    };
    let awkward = |g: &mut Gen| -> u32 {
        const VALUES: [u32; 8] = [
            0,
            1,
            u32::MAX,
            u32::MAX - 1,
            0x8000_0000,
            0x7fff_ffff,
            0x2000_0000,
            0x1fff_ffff,
        ];
        if g.below(2) == 0 {
            VALUES[g.below(VALUES.len() as u64) as usize]
        } else {
            g.below(64) as u32
        }
    };
    match g.below(7) {
        0 => {
            let cut = g.below(buf.len() as u64) as usize;
            buf.truncate(cut);
        }
        1 => {
            let v = awkward(g);
            put_u32(&mut buf, 0, v);
        }
        2 => {
            // A length field: with (0x8000_0000, 0x8000_0000) the sum wraps a 32-bit usize.
            // Within the (possibly already damaged) table, or just past it.
            let table = (buf.len().saturating_sub(4) / 4) as u64;
            let at = 4 + 4 * g.below(table + 1) as usize;
            let v = awkward(g);
            put_u32(&mut buf, at, v);
        }
        3 => {
            if !buf.is_empty() {
                let at = g.below(buf.len() as u64) as usize;
                buf[at] = g.next() as u8;
            }
        }
        4 => {
            let extra = g.bytes(16);
            buf.extend_from_slice(&extra);
        }
        5 => {
            // Drop one byte from the middle: everything after it shifts.
            if !buf.is_empty() {
                let at = g.below(buf.len() as u64) as usize;
                buf.remove(at);
            }
        }
        _ => {
            // Two overflowing lengths in the first pair.
            put_u32(&mut buf, 4, 0x8000_0000);
            put_u32(&mut buf, 8, 0x8000_0000);
        }
    }
    buf
}

/// Reads `buf` every way the filter can and checks the answers against the reference.
fn check(buf: &[u8], case: &str) {
    let parsed = SerializedHeaders::parse(buf);
    let expected = reference(buf);
    assert_eq!(
        parsed.is_some(),
        expected.is_some(),
        "{case}: accepted or refused differently: {buf:?}"
    );
    let (Some(h), Some(pairs)) = (parsed, expected) else {
        return;
    };
    assert_eq!(h.len(), pairs.len(), "{case}");
    assert_eq!(h.is_empty(), pairs.is_empty(), "{case}");
    let got: Pairs = h.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
    assert_eq!(got, pairs, "{case}");
    for probe in [
        ":authority",
        "cookie",
        "x-canary-subset",
        "",
        "a",
        "x-canary-subset-longer",
        "x-absent",
    ] {
        let first = pairs
            .iter()
            .find(|(n, _)| n == probe.as_bytes())
            .map(|(_, v)| v.as_slice());
        assert_eq!(h.value(probe), first, "{case}: value({probe:?})");
        assert_eq!(h.contains(probe), first.is_some(), "{case}");
        assert_eq!(
            h.header(probe),
            first.and_then(|v| std::str::from_utf8(v).ok()),
            "{case}: header({probe:?})"
        );
    }
}

#[test]
fn well_formed_buffers_read_exactly_like_a_plain_decoder() {
    let mut g = Gen(1);
    for i in 0..5_000 {
        let pairs = g.pairs();
        let buf = encode(&pairs);
        assert_eq!(reference(&buf).as_ref(), Some(&pairs), "encoder, case {i}");
        if let Ok(text) = pairs
            .iter()
            .map(|(n, v)| Ok((std::str::from_utf8(n)?, v.as_slice())))
            .collect::<Result<Vec<_>, std::str::Utf8Error>>()
        {
            assert_eq!(serialize(&text), buf, "the core's serializer, case {i}");
        }
        check(&buf, &format!("well-formed case {i}"));
    }
}

#[test]
fn damaged_buffers_are_refused_or_read_consistently_never_a_panic() {
    let mut g = Gen(2);
    let (mut refused, mut accepted) = (0, 0);
    for i in 0..40_000 {
        let mut buf = encode(&g.pairs());
        for _ in 0..=g.below(3) {
            buf = mutate(&mut g, buf);
        }
        check(&buf, &format!("damaged case {i}"));
        match SerializedHeaders::parse(&buf) {
            Some(_) => accepted += 1,
            None => refused += 1,
        }
    }
    // The generator must exercise both outcomes, or the comparison proves little.
    assert!(
        refused > 10_000 && accepted > 5_000,
        "{refused} refused, {accepted} accepted"
    );
}

#[test]
fn random_bytes_are_refused_or_read_consistently_never_a_panic() {
    let mut g = Gen(3);
    for i in 0..40_000 {
        let mut buf = g.bytes(64);
        if buf.len() >= 4 && g.below(2) == 0 {
            // A small count, so that some random buffers are consistent.
            buf[..4].copy_from_slice(&(g.below(4) as u32).to_le_bytes());
        }
        check(&buf, &format!("random case {i}"));
    }
}

#[test]
fn a_huge_count_is_refused_without_reading_a_table_that_is_not_there() {
    for count in [u32::MAX, 0x2000_0000, 0x1fff_ffff, 1 << 28] {
        let mut buf = count.to_le_bytes().to_vec();
        buf.extend_from_slice(&[0; 64]);
        assert!(SerializedHeaders::parse(&buf).is_none(), "count {count}");
    }
}
