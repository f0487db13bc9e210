//! How the demos look (`make demo`, `make demo-mesh`): a live line per rollout step that
//! redraws in place on a terminal, or plain periodic lines when stdout is a file or a pipe (CI
//! logs), and the summary table.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Width of the canary-share bar, in characters. The live row stays under 78 columns, so the
/// `^C` a terminal echoes after it does not wrap and the final redraw replaces it cleanly.
const BAR_WIDTH: usize = 16;

/// The step row's columns; the header and every row use the same widths.
const ROW_HEADER: &str = "  step  target  canary share      observed    req/s  requests  non-2xx";

/// What one rollout step saw, as its row shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepCounts {
    pub requests: u64,
    pub canary: u64,
    pub failures: u64,
}

/// Where output goes and what it may use.
pub struct Display {
    /// stdout is a terminal: redraw the live line in place, Unicode bar.
    pub tty: bool,
    /// ANSI colours (a terminal, and `NO_COLOR` unset).
    color: bool,
}

/// How a step row ends: still running (elapsed time), passed, or failed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    Running(Duration),
    Passed,
    Failed,
    /// Ctrl-C: the row shows the last counts taken before it.
    Interrupted,
}

/// One step's row, as shown live and at the end of the step.
pub struct StepRow<'a> {
    pub label: &'a str,
    pub weight_bp: u32,
    pub counts: StepCounts,
    pub elapsed: Duration,
    pub state: RowState,
}

impl Display {
    pub fn detect() -> Display {
        let tty = std::io::stdout().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Display { tty, color }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }
    pub fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }
    /// The canary's colour, everywhere it is named.
    pub fn canary(&self, text: &str) -> String {
        self.paint("33", text)
    }
    /// The stable version's colour.
    pub fn stable(&self, text: &str) -> String {
        self.paint("36", text)
    }

    pub fn line(&self, text: &str) {
        println!("{text}");
    }

    pub fn blank(&self) {
        println!();
    }

    /// A section title.
    pub fn section(&self, title: &str) {
        println!();
        println!("{}", self.bold(title));
    }

    pub fn row_header(&self) {
        println!("{}", self.dim(ROW_HEADER));
    }

    /// An event between step rows (a config push, a probe result).
    pub fn event(&self, text: &str) {
        println!("  {} {text}", self.dim("──"));
    }

    /// A detail under an event.
    pub fn detail(&self, text: &str) {
        println!("       {text}");
    }

    /// A live line for one step. Call [`LiveLine::update`] often; it redraws in place on a
    /// terminal and prints a line a second otherwise.
    pub fn live_line(&self) -> LiveLine<'_> {
        LiveLine {
            display: self,
            last_plain: None,
        }
    }

    fn bar(&self, share: f64) -> String {
        let share = share.clamp(0.0, 1.0);
        if !self.tty {
            let full = (share * BAR_WIDTH as f64).round() as usize;
            return format!("{}{}", "#".repeat(full), ".".repeat(BAR_WIDTH - full));
        }
        // Eighth blocks give the bar 160 steps: 10% and 12.5% look different.
        const EIGHTHS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
        let eighths = (share * (BAR_WIDTH * 8) as f64).round() as usize;
        let (full, part) = (eighths / 8, eighths % 8);
        let mut canary = "█".repeat(full);
        let mut used = full;
        if let Some(p) = EIGHTHS.get(part).filter(|p| !p.is_empty()) {
            canary.push_str(p);
            used += 1;
        }
        let rest = "░".repeat(BAR_WIDTH.saturating_sub(used));
        format!("{}{}", self.canary(&canary), self.dim(&rest))
    }

    pub fn step_row(&self, row: &StepRow<'_>) -> String {
        let c = row.counts;
        let share = if c.requests == 0 {
            0.0
        } else {
            c.canary as f64 / c.requests as f64
        };
        let observed = if c.requests == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}%", share * 100.0)
        };
        let secs = row.elapsed.as_secs_f64();
        let rate = if secs > 0.05 {
            group(((c.requests as f64) / secs).round() as u64)
        } else {
            "-".to_owned()
        };
        let failures = format!("{:>7}", group(c.failures));
        let failures = if c.failures > 0 {
            self.red(&failures)
        } else {
            failures
        };
        let mark = match row.state {
            RowState::Running(at) => self.dim(&format!("{:.1}s", at.as_secs_f64())),
            RowState::Passed => self.green("✓"),
            RowState::Failed => self.red("✗"),
            RowState::Interrupted => self.dim("stop"),
        };
        format!(
            "  {:>4}  {:>6}  {}  {:>8}  {:>7}  {:>8}  {failures}  {mark}",
            row.label,
            percent(row.weight_bp),
            self.bar(share),
            observed,
            rate,
            group(c.requests),
        )
    }
}

/// The row of the step that is running.
pub struct LiveLine<'a> {
    display: &'a Display,
    last_plain: Option<Instant>,
}

impl LiveLine<'_> {
    /// How often to call [`LiveLine::update`].
    pub fn tick(&self) -> Duration {
        if self.display.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(250)
        }
    }

    pub fn update(&mut self, row: &str) {
        if self.display.tty {
            print!("\r\x1b[2K{row}");
            let _ = std::io::stdout().flush();
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_plain = Some(Instant::now());
            println!("{row}");
        }
    }

    /// The step is over: its final row stays on screen.
    pub fn finish(self, row: &str) {
        if self.display.tty {
            println!("\r\x1b[2K{row}");
        } else {
            println!("{row}");
        }
    }
}

/// Basis points as a percentage: `1000` -> `10%`, `1250` -> `12.5%`, `1` -> `0.01%`.
pub fn percent(bp: u32) -> String {
    let s = format!("{:.2}", f64::from(bp) / 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// `20840` -> `20,840`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_read_as_percentages_without_trailing_zeros() {
        assert_eq!(percent(0), "0%");
        assert_eq!(percent(1000), "10%");
        assert_eq!(percent(1250), "12.5%");
        assert_eq!(percent(1), "0.01%");
        assert_eq!(percent(10_000), "100%");
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(20_840), "20,840");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
