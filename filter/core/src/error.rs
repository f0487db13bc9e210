//! Config rejection: always names the field.

use std::fmt;

/// Why a `pluginConfig` was rejected. `field` is a path into the JSON (`services[1].hosts[0]`),
/// so the one log line Envoy prints tells the operator exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending field, or `(root)`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// A rejection of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    /// One line whatever the config held: the field and reason echo values from the config, so
    /// control characters (CR and LF would forge log lines, ESC drives terminals) and Unicode
    /// line and paragraph separators are escaped as Rust escapes them (`\r`, `\u{1b}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.field)?;
        f.write_str(": ")?;
        write_escaped(f, &self.reason)
    }
}

fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            write!(f, "{}", c.escape_debug())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

impl std::error::Error for ConfigError {}
