//! Keeping the values of Secret-backed arguments out of everything the controller writes where
//! a user without `get secrets` can read it: the rollout's status (measurement values and
//! messages), Events and logs.
//!
//! A value does not only appear as written. A provider's answer that echoes it is serialized
//! as JSON (`"` becomes `\"`), a message quoting a string uses Rust's debug escapes, and a
//! Prometheus query travels percent-encoded in the URL an error message names. Each of those
//! spellings is replaced, and text is redacted before it is shortened, so a cut can never leave
//! part of a value behind.

use serde_json::Value;

/// What a redacted value reads as.
pub const REDACTED: &str = "*****";

/// The spellings of a measurement's Secret values, longest first (a longer spelling may contain
/// a shorter one: it must be replaced whole).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redactor {
    values: Vec<String>,
    spellings: Vec<String>,
}

impl Redactor {
    /// A redactor for `values` as written, JSON-escaped, debug-escaped and with runs of
    /// whitespace collapsed (as messages quoting expr's errors do). Empty values are ignored:
    /// they would match everywhere.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let values: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        let mut r = Self {
            values,
            spellings: Vec::new(),
        };
        r = r.with_spelling(str::to_owned);
        r = r.with_spelling(|v| unquote(&serde_json::to_string(v).unwrap_or_default()).to_owned());
        r = r.with_spelling(|v| unquote(&format!("{v:?}")).to_owned());
        r.with_spelling(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// Also redacts `spell(value)` for each value: how a provider encodes values on the wire
    /// (e.g. percent-encoding in a URL that an error message names).
    pub fn with_spelling(mut self, spell: impl Fn(&str) -> String) -> Self {
        self.spellings.extend(
            self.values
                .iter()
                .map(|v| spell(v))
                .filter(|s| !s.is_empty()),
        );
        self.spellings
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.spellings.dedup();
        self
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.spellings.is_empty()
    }

    /// `text` with every spelling of every value replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        self.spellings
            .iter()
            .fold(text.to_owned(), |t, s| t.replace(s.as_str(), REDACTED))
    }

    /// `text` redacted, then cut to at most `max` characters (`...` marks a cut).
    pub fn redact_and_cut(&self, text: &str, max: usize) -> String {
        let redacted = self.redact(text);
        if redacted.chars().count() <= max {
            return redacted;
        }
        let mut cut: String = redacted.chars().take(max).collect();
        cut.push_str("...");
        cut
    }

    /// `v` as compact JSON with the values redacted in its strings and keys, and in the
    /// serialized text (a value may also be a number in the answer).
    pub fn redact_json(&self, v: &Value) -> String {
        if self.is_empty() {
            return v.to_string();
        }
        self.redact(&self.redact_strings(v).to_string())
    }

    fn redact_strings(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.redact_strings(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (self.redact(k), self.redact_strings(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

fn unquote(quoted: &str) -> &str {
    quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(quoted)
}
