//! The header-route regex engine agrees with the `regex` crate (RE2 semantics) on full matches,
//! and refuses what it does not support instead of misreading it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use canary_core::regex::Regex;

const PATTERNS: &[&str] = &[
    "",
    "a",
    "abc",
    "a|b",
    "ab|cd|",
    "a*",
    "a+",
    "a?",
    "a*?",
    "a+?",
    "(ab)*",
    "(a|b)*c",
    "a{3}",
    "a{2,}",
    "a{1,3}",
    "(ab){0,2}",
    "(?:ab|a)(?:bc|c)",
    "(?P<x>a)b",
    "(?<y>a)+",
    ".",
    ".*",
    ".+x",
    "[abc]",
    "[^abc]",
    "[a-z]+",
    "[A-Za-z0-9_-]+",
    "[]a]",
    "[^]a]",
    "[a-]",
    "[\\]]",
    "[\\d.]+",
    "\\d+",
    "\\D",
    "\\w+",
    "\\W",
    "\\s",
    "\\S+",
    "\\.",
    "a\\.b",
    "\\*\\+\\?",
    "\\(x\\)",
    "^abc$",
    "^a|b$",
    "(^a)",
    "x$",
    "Mozilla/5\\.0 .*CanaryBot.*",
    "(?i)canary",
    "(?i)[a-c]+X",
    "(?i)[^a-z]",
    "v[0-9]+\\.[0-9]+",
    "team-(qa|dev)-\\d{2,3}",
    "(a*)*",
    "(a|)+b",
    "((a|b)(c|d))+",
    "é+",
    "[α-ω]+",
    "a{0}",
    "a{0,0}b",
    "(a+)?",
];

const INPUTS: &[&str] = &[
    "",
    "a",
    "b",
    "c",
    "ab",
    "abc",
    "abcd",
    "aaa",
    "aaaa",
    "ababab",
    "abc ",
    "cd",
    "x",
    "ax",
    "aax",
    "a.b",
    "a-b",
    "_",
    "-",
    "]",
    "]a",
    "0",
    "123",
    "12a",
    " ",
    "\t",
    "*+?",
    "(x)",
    "Mozilla/5.0 (X11) CanaryBot/1",
    "Mozilla/5x0 CanaryBot",
    "CANARY",
    "Canary",
    "canary",
    "ABCx",
    "abcX",
    "Z",
    "v1.2",
    "v1x2",
    "team-qa-12",
    "team-dev-1234",
    "team-ops-12",
    "aab",
    "acbd",
    "éé",
    "αβγ",
    "\n",
    "b\n",
    "x\ny",
];

#[test]
fn full_matches_agree_with_the_regex_crate() {
    let mut checked = 0;
    for pattern in PATTERNS {
        let ours =
            Regex::new(pattern).unwrap_or_else(|e| panic!("{pattern:?} should compile: {e}"));
        let reference = regex::Regex::new(&format!("^(?:{})$", re2_perl_classes(pattern))).unwrap();
        for input in INPUTS {
            assert_eq!(
                ours.is_match(input),
                reference.is_match(input),
                "pattern {pattern:?} on {input:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, PATTERNS.len() * INPUTS.len());
}

/// RE2's Perl classes are ASCII; the regex crate's are Unicode. Spell RE2's definitions out,
/// as a class outside brackets and as ranges inside them.
fn re2_perl_classes(pattern: &str) -> String {
    let mut out = String::new();
    let mut in_class = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let Some(e) = chars.next() else { break };
            let ranges = match e {
                'd' => Some(("0-9", false)),
                'w' => Some(("0-9A-Za-z_", false)),
                's' => Some(("\\t\\n\\x0C\\r ", false)),
                'D' => Some(("0-9", true)),
                'W' => Some(("0-9A-Za-z_", true)),
                'S' => Some(("\\t\\n\\x0C\\r ", true)),
                _ => None,
            };
            match ranges {
                Some((r, false)) if in_class => out.push_str(r),
                Some((r, negated)) => {
                    out.push_str(&format!("[{}{r}]", if negated { "^" } else { "" }))
                }
                None => {
                    out.push('\\');
                    out.push(e);
                }
            }
            continue;
        }
        if c == '[' && !in_class {
            in_class = true;
            out.push(c);
            if chars.peek() == Some(&'^') {
                out.push('^');
                chars.next();
            }
            if chars.peek() == Some(&']') {
                out.push_str("\\]");
                chars.next();
            }
            continue;
        }
        if c == ']' && in_class {
            in_class = false;
        }
        out.push(c);
    }
    out
}

#[test]
fn unsupported_or_broken_patterns_are_refused_with_a_reason() {
    for (pattern, reason) in [
        ("(", "not closed"),
        (")", "unexpected ')'"),
        ("[a", "not closed"),
        ("a**", "cannot follow"),
        ("*a", "nothing to repeat"),
        ("a{3,2}", "min above max"),
        ("a{1001}", "limit"),
        ("(a)\\1", "backreferences"),
        ("(?=a)", "lookaround"),
        ("(?s)a", "flag"),
        ("\\p{L}", "Unicode classes"),
        ("\\q", "unknown escape"),
        ("a\\", "lone backslash"),
        ("[z-a]", "reversed"),
        ("[[:alpha:]]", "POSIX"),
        ("\\bword", "not supported"),
        ("(((((a{10}){10}){10}){10}){10})", "too large"),
    ] {
        let e = Regex::new(pattern).expect_err(pattern);
        assert!(
            e.0.contains(reason),
            "{pattern:?}: {e} should mention {reason:?}"
        );
    }
}

/// A run of `n` a's, then "ba": it contains the required literal `b` (so the prefilter lets
/// it through to the NFA), and it does not match. A backtracking engine tries every way of
/// splitting the a's before giving up: exponentially many for these patterns.
fn redos_input(n: usize) -> String {
    format!("{}ba", "a".repeat(n))
}

const REDOS_PATTERNS: [&str; 3] = ["(a|aa)*b", "(a*)*b", "(a+)+b"];

/// Input sizes, each 4x the one before.
const SIZES: [usize; 6] = [16, 64, 256, 1_024, 4_096, 16_384];

/// Whether `work(n)` grows linearly: at 4x the input, at most 4.5x the work (a linear engine
/// has `c·n + d`, a ratio just under 4; a quadratic one 16; a backtracking one explodes).
/// Counted steps, not time: the verdict is the same on an idle laptop and a loaded CI machine.
fn grows_linearly(mut work: impl FnMut(usize) -> u64) -> Result<(), String> {
    let mut previous: Option<(usize, u64)> = None;
    // Size by size, stopping at the first failure: a backtracker is not run at 16,384.
    for n in SIZES {
        let steps = work(n);
        if let Some((m, before)) = previous {
            let ratio = steps as f64 / before.max(1) as f64;
            if ratio > 4.5 {
                return Err(format!(
                    "{before} steps at n={m}, {steps} at n={n}: x{ratio:.1} for x4 the input"
                ));
            }
        }
        previous = Some((n, steps));
    }
    Ok(())
}

#[test]
fn matching_work_grows_linearly_with_the_input_on_classic_redos_patterns() {
    for pattern in REDOS_PATTERNS {
        let re = Regex::new(pattern).unwrap();
        assert!(!re.is_match(&redos_input(20_000)), "{pattern}");
        assert!(
            re.is_match(&format!("{}b", "a".repeat(20_000))),
            "{pattern}"
        );
        grows_linearly(|n| {
            let (matched, steps) = re.match_work(&redos_input(n));
            assert!(!matched, "{pattern} on {n} a's and \"ba\"");
            steps
        })
        .unwrap_or_else(|e| panic!("{pattern}: {e}"));
    }
}

/// The check above is not vacuous: a naive backtracking matcher for `(a|aa)*b` (greedy, as
/// Perl, PCRE, Java or JavaScript run it), counting its calls and giving up after 10 million,
/// fails it.
#[test]
fn the_linearity_check_rejects_a_backtracking_engine() {
    const GIVE_UP: u64 = 10_000_000;
    fn backtrack(text: &[u8], at: usize, steps: &mut u64) -> bool {
        *steps += 1;
        if *steps > GIVE_UP {
            return false;
        }
        (text.get(at) == Some(&b'a') && backtrack(text, at + 1, steps))
            || (text.get(at..at + 2) == Some(b"aa") && backtrack(text, at + 2, steps))
            || (text.get(at) == Some(&b'b') && at + 1 == text.len())
    }
    let mut backtracking_work = |n: usize| {
        let mut steps = 0;
        let text = redos_input(n);
        assert!(!backtrack(text.as_bytes(), 0, &mut steps));
        steps
    };
    let verdict = grows_linearly(&mut backtracking_work);
    assert!(verdict.is_err(), "a backtracker passed the linearity check");
    // It does match what it should: the same pattern on a matching text.
    let mut steps = 0;
    assert!(backtrack(b"aaab", 0, &mut steps));
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!("{}a{}", "(".repeat(200), ")".repeat(200));
    assert!(Regex::new(&deep).unwrap_err().0.contains("nested"));
}
