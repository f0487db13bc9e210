//! `make demo` as a user sees it in a CI log: the built `demo` binary with stdout piped (plain
//! lines, no redraws), short steps. It must finish, exit 0, and show what it promises.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use wasm_canary_e2e::binomial_bounds;

fn demo(args: &[&str]) -> (Output, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// One row of the summary table.
#[derive(Debug)]
struct SummaryRow {
    target_percent: f64,
    canary: u64,
    requests: u64,
    non_2xx: u64,
}

fn number(token: &str) -> u64 {
    token.replace(',', "").parse().unwrap()
}

/// Rows of the table under `Summary`: `target observed canary / requests range non-2xx ...`.
fn summary_rows(stdout: &str) -> Vec<SummaryRow> {
    stdout
        .lines()
        .skip_while(|l| l.trim() != "Summary")
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            assert!(t.len() >= 7 && t[3] == "/", "summary row {l:?}");
            SummaryRow {
                target_percent: t[0].trim_end_matches('%').parse().unwrap(),
                canary: number(t[2]),
                requests: number(t[4]),
                non_2xx: number(t[6]),
            }
        })
        .collect()
}

#[test]
fn the_demo_rolls_out_0_10_50_100_percent_showing_each_split_and_exits_0() {
    // Each step holds 1 s and until 2,000 requests were counted: the split is judged on enough
    // traffic however busy the machine is, instead of hoping 1 s brings enough.
    let (output, stdout, stderr) = demo(&["--step-seconds", "1", "--min-requests", "2000"]);
    assert!(
        output.status.success(),
        "demo exits 0; status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let has = |needle: &str| {
        assert!(
            stdout.contains(needle),
            "the output shows {needle:?}:\n{stdout}"
        )
    };

    // Each version's tag, and the test request reaching canary at 0% before any user does.
    has("tag 6c9f8d5b7d");
    has("tag 84b7c6f5d9");
    has("initial pluginConfig: canaryWeight 0 (0%)");
    has("test request  x-canary: always → canary 84b7c6f5d9");
    has("user request  no test header   → stable 6c9f8d5b7d");
    has("user requests reached canary; the test request did");

    // Every weight change is a live push that Envoy accepted.
    for weight in ["1000 (10%)", "5000 (50%)", "10000 (100%)"] {
        has(&format!("push canaryWeight {weight} → accepted by Envoy"));
    }

    // A sticky user keeps its version: all its requests at each step land on canary.
    let sticky: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("sticky user"))
        .collect();
    assert_eq!(
        sticky.len(),
        3,
        "a sticky-user line at 10, 50, 100%:\n{stdout}"
    );
    for line in sticky {
        assert!(
            line.contains("→ canary 84b7c6f5d9 on 20/20"),
            "the sticky user stays on canary: {line}"
        );
    }

    // Plain output (not a terminal): no cursor movement, a progress line at least every second.
    assert!(!stdout.contains('\x1b'), "no escape codes when piped");
    assert!(!stdout.contains('\r'), "no carriage returns when piped");
    for step in ["1/4", "2/4", "3/4", "4/4"] {
        let rows = stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(step))
            .count();
        assert!(
            rows >= 2,
            "step {step}: progress, then its final row:\n{stdout}"
        );
    }

    // The summary: each step's observed share is what its weight says, with no non-2xx.
    let rows = summary_rows(&stdout);
    let targets: Vec<f64> = rows.iter().map(|r| r.target_percent).collect();
    assert_eq!(targets, [0.0, 10.0, 50.0, 100.0], "summary rows:\n{stdout}");
    for row in &rows {
        assert!(
            row.requests >= 2_000,
            "each step held until --min-requests were counted at {}%: {row:?}",
            row.target_percent
        );
        let (lo, hi) = binomial_bounds(row.requests, row.target_percent / 100.0);
        assert!(
            (lo..=hi).contains(&row.canary),
            "at {}% canary served {} of {}, outside [{lo:.1}, {hi:.1}]",
            row.target_percent,
            row.canary,
            row.requests
        );
        assert_eq!(row.non_2xx, 0, "no non-2xx at {}%", row.target_percent);
    }
    has("✓ canary 84b7c6f5d9 promoted to 100% with 3 live config pushes");
    has("Stopped the load, the 3 Envoys and the 3 apps.");
}

#[test]
fn a_canary_that_fails_the_header_routed_test_request_stops_the_demo_before_any_user_reaches_it() {
    let (output, stdout, stderr) = demo(&["--step-seconds", "1", "--canary-status", "503"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "demo exits 1\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("test request  x-canary: always → 503 from canary 84b7c6f5d9"),
        "the failing test request is shown:\n{stdout}"
    );
    assert!(
        stderr.contains("canary answered the header-routed test request with 503")
            && stderr.contains("Rollout not started"),
        "the reason is given: {stderr}"
    );
    assert!(
        !stdout.contains("push canaryWeight"),
        "no weight was pushed:\n{stdout}"
    );
    assert!(stdout.contains("Stopped the load, the 3 Envoys and the 3 apps."));
}

#[test]
fn demo_help_describes_the_step_duration_and_exits_0() {
    let (output, stdout, _) = demo(&["--help"]);
    assert!(output.status.success());
    assert!(stdout.contains("--step-seconds N"), "{stdout}");
    assert!(stdout.contains("--min-requests N"), "{stdout}");
    assert!(stdout.contains("make demo"), "{stdout}");
}
