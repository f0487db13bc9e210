//! Durations as Argo Rollouts users write them (`30`, `"30"`, `30s`, `1h30m`, `500ms`): parsed
//! as Go's `time.ParseDuration` does, and printed back the way a user would write them. A leaf:
//! the step logic and the analysis both import it, it imports nothing of the domain.

use std::time::Duration;

/// Parses a duration as Argo Rollouts does: an integer (seconds, as a number or a string of
/// digits), or a Go duration string (`time.ParseDuration`: `30s`, `10m`, `1h30m`, `1.5h`,
/// `500ms`; units ns, us, µs, ms, s, m, h). Negative durations are refused.
pub fn parse_duration(v: &serde_json::Value) -> Result<Duration, String> {
    if let Some(n) = v.as_u64() {
        return Ok(Duration::from_secs(n));
    }
    let s = v
        .as_str()
        .ok_or_else(|| format!("duration {v} is neither a number nor a string"))?;
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration {s:?} is too large"));
    }
    parse_go_duration(s)
}

/// Go's `time.ParseDuration` for non-negative values: a sequence of decimal numbers, each with an
/// optional fraction and a unit (`1h30m`, `1.5s`, `300ms`); `0` alone needs no unit.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("duration {s:?} {why}; write it like 30s, 10m, 1h30m or 500ms");
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.starts_with('-') {
        return Err(bad("is negative"));
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(bad("is empty"));
    }
    let mut rest = body;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad("has a unit without a number"));
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, next) = after.split_at(unit_len);
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("has a number without a unit")),
            other => return Err(bad(&format!("has unknown unit {other:?}"))),
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad("is too large"))?
        };
        let mut nanos = int
            .checked_mul(per_unit)
            .ok_or_else(|| bad("is too large"))?;
        // The fraction, truncated to the nanosecond as Go does; digits past the 24th cannot
        // change a nanosecond and are ignored.
        let (mut frac, mut scale) = (0u128, 1u128);
        for d in frac_part.bytes().take(24) {
            frac = frac * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        nanos += frac * per_unit / scale;
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| bad("is too large"))?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| bad("is too large"))?;
    // The remainder is below 10^9, so it fits.
    let sub = u32::try_from(total_nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// `500ms`, `2s`, `1.5s`, `90s`: as a user wrote it, to the millisecond.
pub fn format_duration(d: Duration) -> String {
    let ms = d.subsec_millis();
    match (d.as_secs(), ms) {
        (0, ms) => format!("{ms}ms"),
        (s, 0) => format!("{s}s"),
        (s, ms) => format!("{s}.{}s", format!("{ms:03}").trim_end_matches('0')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        let ms = Duration::from_millis;
        assert_eq!(format_duration(ms(500)), "500ms");
        assert_eq!(format_duration(ms(2_000)), "2s");
        assert_eq!(format_duration(ms(1_500)), "1.5s");
        assert_eq!(format_duration(ms(61_250)), "61.25s");
    }
}
