//! `make demo`: a canary rollout of `reviews` on real Envoys running the filter, live.
//!
//! Starts the miniature mesh (client sidecar with the filter in client mode, configured by ECDS
//! as istiod pushes a WasmPlugin; a stable and a canary version, each behind a sidecar with the
//! filter in server mode), keeps user traffic flowing, and steps the canary weight through live
//! config pushes while showing the split each step produces. Exits 0 only if every step's split
//! is what its weight says, every user request got a 2xx, and every push was accepted.

#[path = "../demo/load.rs"]
mod load;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use wasm_canary_e2e::http::Client;
use wasm_canary_e2e::mesh::{reviews_config, Mesh, Push, CANARY_HASH, STABLE_HASH};
use wasm_canary_e2e::{binomial_bounds, FALSE_ALARM_PER_CHECK};

use load::{StepCounts, UserLoad, REVIEWS_HOST, VERSION_TAG};
use wasm_canary_e2e::display::{group, percent, Display, RowState, StepRow};

const USAGE: &str = "\
demo: a canary rollout on real Envoys running the wasm-canary filter, live

Starts a miniature Istio mesh on loopback (a client sidecar running the filter in client
mode, configured live by ECDS the way istiod pushes a WasmPlugin's pluginConfig; a stable and
a canary version of `reviews`, each behind a sidecar running the filter in server mode), keeps
user traffic flowing from a few keep-alive clients, and steps the canary weight through live
config pushes. For each step it shows the observed split, requests/s and non-2xx responses;
it also shows a header-routed test request reaching canary at 0%, a sticky user keeping its
version, and the version tag on each response. Ends with a summary table.

Exit status: 0 if every push was accepted, every user request got a 2xx and every step's
observed canary count is inside the exact binomial range of its weight (a false alarm
once in a million steps); 1 otherwise (with the
reason); 2 for bad arguments; 130 when interrupted (Ctrl-C or SIGTERM stop the load
and every Envoy).

usage: demo [--step-seconds N] [--min-requests N] [--steps P,P,...] [--clients N]
            [--canary-status CODE]

options:
  --step-seconds N   how long each weight is held, in seconds (default 4)
  --min-requests N   hold each weight also until N user requests were counted, so
                     its split is judged on enough traffic (default 1000); a step
                     that cannot reach N within 120 s more fails the demo
  --steps P,P,...    canary weights in percent, in order (default 0,10,50,100)
  --clients N        keep-alive user clients sending requests (default 4)
  --canary-status C  make the canary app answer with status C (e.g. 500), to see
                     how a failing canary aborts the rollout
  -h, --help         this text

From the repository: `make demo` (sets up, builds the filter, runs this), or
  cargo run --release -p wasm-canary-e2e --bin demo -- --step-seconds 2";

/// What the command line asked for.
struct Options {
    step: Duration,
    /// User requests each step counts at least before it ends.
    min_requests: u64,
    /// Canary weights in basis points.
    weights: Vec<u32>,
    clients: usize,
    /// Status the canary app answers with (200 unless a failure is being shown).
    canary_status: u16,
}

impl Options {
    /// `Ok(None)` means `--help`.
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Option<Options>> {
        let mut options = Options {
            step: Duration::from_secs(4),
            min_requests: 1_000,
            weights: vec![0, 1_000, 5_000, 10_000],
            clients: 4,
            canary_status: 200,
        };
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg, None),
            };
            if name == "-h" || name == "--help" {
                return Ok(None);
            }
            const TAKES_A_VALUE: [&str; 5] = [
                "--step-seconds",
                "--min-requests",
                "--steps",
                "--clients",
                "--canary-status",
            ];
            if !TAKES_A_VALUE.contains(&name.as_str()) {
                bail!("unknown option {name}");
            }
            let value = match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => bail!("{name} needs a value"),
            };
            match name.as_str() {
                "--step-seconds" => {
                    let secs: f64 = value
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 600.0)
                        .with_context(|| {
                            format!("--step-seconds {value}: expected seconds in (0, 600]")
                        })?;
                    options.step = Duration::from_secs_f64(secs);
                }
                "--min-requests" => {
                    options.min_requests = value
                        .parse()
                        .ok()
                        .filter(|n| *n <= 10_000_000)
                        .with_context(|| {
                            format!("--min-requests {value}: expected 0..=10000000")
                        })?;
                }
                "--steps" => {
                    options.weights = value
                        .split(',')
                        .map(|p| {
                            p.trim()
                                .trim_end_matches('%')
                                .parse::<f64>()
                                .ok()
                                .filter(|p| (0.0..=100.0).contains(p))
                                .map(|p| (p * 100.0).round() as u32)
                                .with_context(|| {
                                    format!("--steps: {p:?} is not a percentage in 0..=100")
                                })
                        })
                        .collect::<anyhow::Result<_>>()?;
                }
                "--clients" => {
                    options.clients = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=32).contains(n))
                        .with_context(|| format!("--clients {value}: expected 1..=32"))?;
                }
                "--canary-status" => {
                    options.canary_status = value
                        .parse()
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .with_context(|| format!("--canary-status {value}: expected 100..=599"))?;
                }
                other => bail!("unknown option {other}"),
            }
        }
        Ok(Some(options))
    }
}

/// Why the demo stopped early.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo: {e:#} (see --help)");
            return ExitCode::from(2);
        }
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        // Without the handler Ctrl-C would kill us before the mesh's Drop stops the Envoys.
        if let Err(e) = ctrlc::set_handler(move || interrupted.store(true, Ordering::SeqCst)) {
            eprintln!(
                "demo: cannot install the Ctrl-C handler ({e}); Ctrl-C may leave Envoys running"
            );
        }
    }
    let out = Display::detect();
    let started = Instant::now();
    // `run` owns the mesh and the load: when it returns, every client thread has been joined
    // and every Envoy killed and reaped, whatever happened.
    let result = run(&options, &out, &interrupted);
    let stopped = out.dim(&format!(
        "Stopped the load, the 3 Envoys and the 3 apps. Total {:.1} s.",
        started.elapsed().as_secs_f64()
    ));
    match result {
        Ok(()) => {
            out.line(&stopped);
            ExitCode::SUCCESS
        }
        Err(e) if e.is::<Interrupted>() || interrupted.load(Ordering::SeqCst) => {
            out.blank();
            out.line(&format!("{} {stopped}", out.red("Interrupted.")));
            ExitCode::from(130)
        }
        Err(e) => {
            out.blank();
            out.line(&stopped);
            eprintln!("{} {e:#}", out.red("demo failed:"));
            ExitCode::FAILURE
        }
    }
}

/// What one step ended with, for the summary.
struct StepResult {
    weight_bp: u32,
    counts: StepCounts,
    push_ms: Option<u128>,
}

/// A user the demo follows through the rollout: same `x-user-id`, same version.
struct StickyUser {
    id: String,
    since: String,
}

fn run(options: &Options, out: &Display, interrupted: &AtomicBool) -> anyhow::Result<()> {
    let weights = &options.weights;
    let first = *weights.first().context("no steps")?;
    out.line(&out.bold("wasm-canary demo: a canary rollout of `reviews` on real Envoys, live"));
    let wasm = wasm_canary_e2e::filter_wasm()?;
    let envoy = wasm_canary_e2e::envoy_binary()?;
    out.line(&out.dim(&format!(
        "filter {} ({} KiB) · envoy {}",
        relative(&wasm),
        std::fs::metadata(&wasm).map(|m| m.len().div_ceil(1024)).unwrap_or(0),
        envoy_version(&envoy)
    )));

    let t = Instant::now();
    let mesh = Mesh::start(&reviews_config(first)).context("starting the mesh")?;
    check(interrupted)?;
    mesh.canary.set_status(options.canary_status);
    out.section(&format!(
        "Mesh up in {:.1} s, all on 127.0.0.1",
        t.elapsed().as_secs_f64()
    ));
    out.line(&format!(
        "  {} users ─▶ client sidecar :{}  filter: client mode, config via ECDS",
        options.clients,
        mesh.client_addr.port()
    ));
    out.line(&format!(
        "               ├─▶ {} sidecar ─▶ app \"stable\"   tag {}",
        out.stable("stable"),
        out.stable(STABLE_HASH)
    ));
    out.line(&format!(
        "               └─▶ {} sidecar ─▶ app \"canary\"   tag {}",
        out.canary("canary"),
        out.canary(CANARY_HASH)
    ));
    out.line(&out.dim(&format!(
        "  tag: {VERSION_TAG}, set on every response by the\n       \
         filter in server mode from the pod's rollouts-pod-template-hash label"
    )));

    let hold_all = (options.step + MAX_EXTRA_HOLD).mul_f64(weights.len() as f64);
    let mut load = UserLoad::start(
        &mesh,
        options.clients,
        weights.len(),
        hold_all + Duration::from_secs(60),
    );
    let mut probe = mesh.http();
    let mut sticky: Option<StickyUser> = None;
    let mut results: Vec<StepResult> = Vec::new();

    out.section(&format!(
        "Rollout: {} steps × {:.0} s, user traffic flowing throughout",
        weights.len(),
        options.step.as_secs_f64()
    ));
    out.row_header();
    for (i, &weight) in weights.iter().enumerate() {
        check(interrupted)?;
        let push_ms = if i == 0 {
            out.event(&format!(
                "initial pluginConfig: canaryWeight {weight} ({})",
                percent(weight)
            ));
            None
        } else {
            load.pause_counting();
            let t = Instant::now();
            let pushed = mesh
                .push_config(&reviews_config(weight))
                .with_context(|| format!("pushing canaryWeight {weight}"))?;
            let ms = t.elapsed().as_millis();
            if pushed == Push::Rejected {
                out.event(&out.red(&format!("push canaryWeight {weight}: REJECTED by Envoy")));
                bail!(
                    "Envoy rejected the pluginConfig with canaryWeight {weight} (update_rejected); \
                     it keeps serving the previous weight. Rollout aborted."
                );
            }
            out.event(&format!(
                "push canaryWeight {weight} ({}) → {} by Envoy in {ms} ms, no restart",
                percent(weight),
                out.green("accepted")
            ));
            Some(ms)
        };
        if i == 0 {
            show_header_route(out, &mut probe)?;
        }
        follow_sticky_user(out, &mut probe, weight, &mut sticky)?;

        let counts = hold_step(
            out,
            &load,
            i,
            weights.len(),
            weight,
            Hold {
                at_least: options.step,
                min_requests: options.min_requests,
            },
            interrupted,
        )?;
        results.push(StepResult {
            weight_bp: weight,
            counts,
            push_ms,
        });
        if i == 0 && weight == 0 {
            out.detail(&out.dim(&format!(
                "0 of {} user requests reached canary; the test request did",
                group(counts.requests)
            )));
        }
    }
    load.pause_counting();
    load.stop();
    summary(out, &results, options);
    drop(load);
    drop(mesh);
    Ok(())
}

/// `path` relative to the working directory when it is under it (`build/...` from `make demo`).
fn relative(path: &std::path::Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}

/// `1.40.0` from `envoy --version`, or the binary's path if that fails.
fn envoy_version(envoy: &std::path::Path) -> String {
    std::process::Command::new(envoy)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL", on stdout or stderr.
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let (_, after) = text.split_once("version:")?;
            after.trim().split('/').nth(1).map(str::to_owned)
        })
        .unwrap_or_else(|| relative(envoy))
}

fn check(interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// The version tag a response carries, coloured, e.g. `canary 84b7c6f5d9`.
fn served_by(out: &Display, tag: Option<&str>) -> String {
    match tag {
        Some(CANARY_HASH) => format!("{} {}", out.canary("canary"), out.canary(CANARY_HASH)),
        Some(STABLE_HASH) => format!("{} {}", out.stable("stable"), out.stable(STABLE_HASH)),
        Some(other) => out.red(&format!("unknown version {other}")),
        None => out.red(&format!("no {VERSION_TAG}")),
    }
}

/// At the first weight, before users reach canary: a test request with the header route reaches
/// canary, a plain one does not.
fn show_header_route(out: &Display, probe: &mut Client) -> anyhow::Result<()> {
    let test = probe.get(REVIEWS_HOST, "/", &[("x-canary", "always")])?;
    let user = probe.get(REVIEWS_HOST, "/", &[])?;
    let status = |r: &wasm_canary_e2e::http::Response| {
        if (200..300).contains(&r.status) {
            String::new()
        } else {
            out.red(&format!("{} from ", r.status))
        }
    };
    out.detail(&format!(
        "test request  x-canary: always → {}{}  {}",
        status(&test),
        served_by(out, test.header(VERSION_TAG)),
        out.dim("(header route)")
    ));
    out.detail(&format!(
        "user request  no test header   → {}{}",
        status(&user),
        served_by(out, user.header(VERSION_TAG))
    ));
    if test.header(VERSION_TAG) != Some(CANARY_HASH) {
        bail!(
            "the header-routed test request (x-canary: always) did not reach canary: \
             {VERSION_TAG}: {}",
            test.header(VERSION_TAG).unwrap_or("(missing)")
        );
    }
    if !(200..300).contains(&test.status) {
        bail!(
            "canary answered the header-routed test request with {}: caught before any user \
             reached it. Rollout not started.",
            test.status
        );
    }
    Ok(())
}

/// Requests each sticky probe sends: all must land on the same version.
const STICKY_REQUESTS: usize = 20;

/// Once canary has a share, picks a user it serves and shows, at this and every later step,
/// that all of the user's requests land on one version.
fn follow_sticky_user(
    out: &Display,
    probe: &mut Client,
    weight: u32,
    sticky: &mut Option<StickyUser>,
) -> anyhow::Result<()> {
    if sticky.is_none() {
        if weight == 0 || weight == 10_000 {
            return Ok(());
        }
        for n in 1..=2_000 {
            let id = format!("user-{n}");
            let r = probe.get(REVIEWS_HOST, "/", &[("x-user-id", &id)])?;
            if r.header(VERSION_TAG) == Some(CANARY_HASH) {
                *sticky = Some(StickyUser {
                    id,
                    since: percent(weight),
                });
                break;
            }
        }
    }
    let Some(user) = sticky else {
        return Ok(());
    };
    let mut tags = Vec::with_capacity(STICKY_REQUESTS);
    for _ in 0..STICKY_REQUESTS {
        let r = probe.get(REVIEWS_HOST, "/", &[("x-user-id", &user.id)])?;
        tags.push(r.header(VERSION_TAG).map(str::to_owned));
    }
    let first = tags.first().cloned().flatten();
    let same = tags.iter().filter(|t| **t == first).count();
    let note = if first.as_deref() == Some(CANARY_HASH) && user.since != percent(weight) {
        out.dim(&format!(" · since {}", user.since))
    } else {
        String::new()
    };
    out.detail(&format!(
        "sticky user   x-user-id: {} → {} on {same}/{STICKY_REQUESTS}{note}",
        user.id,
        served_by(out, first.as_deref()),
    ));
    if same != STICKY_REQUESTS {
        bail!(
            "sticky user {} was served by more than one version at canaryWeight {weight}",
            user.id
        );
    }
    Ok(())
}

/// How long a step is held: `at_least`, and until `min_requests` user requests were counted.
#[derive(Clone, Copy)]
struct Hold {
    at_least: Duration,
    min_requests: u64,
}

/// How much longer than `--step-seconds` a step may wait for `--min-requests`.
const MAX_EXTRA_HOLD: Duration = Duration::from_secs(120);

/// Holds one weight as `hold` says, redrawing its row, and checks what it saw.
fn hold_step(
    out: &Display,
    load: &UserLoad,
    step: usize,
    steps: usize,
    weight: u32,
    hold: Hold,
    interrupted: &AtomicBool,
) -> anyhow::Result<StepCounts> {
    let tally = load.tally(step).context("step tally")?;
    let label = format!("{}/{steps}", step + 1);
    let row = |counts: StepCounts, elapsed: Duration, state: RowState| {
        out.step_row(&StepRow {
            label: &label,
            weight_bp: weight,
            counts,
            elapsed,
            state,
        })
    };
    let mut line = out.live_line();
    load.count_for(step);
    let start = Instant::now();
    let mut last_good = (StepCounts::default(), Duration::ZERO);
    loop {
        std::thread::sleep(
            line.tick()
                .min(hold.at_least.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(5)),
        );
        let elapsed = start.elapsed();
        let counts = tally.counts();
        // Ctrl-C reaches the Envoys too (same process group): requests failing after it are
        // the shutdown, not the rollout. Read the flag after the counts, show the last ones
        // taken before it.
        if interrupted.load(Ordering::SeqCst) {
            let (counts, elapsed) = if counts.failures == 0 {
                (counts, elapsed)
            } else {
                last_good
            };
            line.finish(&row(counts, elapsed, RowState::Interrupted));
            return Err(Interrupted.into());
        }
        if counts.failures > 0 {
            line.finish(&row(counts, elapsed, RowState::Failed));
            bail!(
                "{} user request(s) failed at canaryWeight {weight} ({}); first: {}. Rollout aborted.",
                counts.failures,
                percent(weight),
                tally.first_failure().unwrap_or_default()
            );
        }
        if elapsed >= hold.at_least + MAX_EXTRA_HOLD && counts.requests < hold.min_requests {
            line.finish(&row(counts, elapsed, RowState::Failed));
            bail!(
                "only {} user requests completed at canaryWeight {weight} in {:.0} s (--min-requests {}): \
                 the load stalled or this machine is too busy to judge the split",
                counts.requests,
                elapsed.as_secs_f64(),
                hold.min_requests
            );
        }
        if elapsed >= hold.at_least && counts.requests >= hold.min_requests {
            load.pause_counting();
            // Responses to requests sent during the step may still be arriving: wait for each
            // (a request has its own timeout, so this ends).
            let settle = Instant::now();
            while !tally.settled() && settle.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let counts = tally.counts();
            let verdict = judge(weight, counts);
            let state = if verdict.is_ok() && counts.failures == 0 {
                RowState::Passed
            } else {
                RowState::Failed
            };
            line.finish(&row(counts, elapsed, state));
            verdict?;
            if counts.failures > 0 {
                bail!(
                    "{} user request(s) failed at canaryWeight {weight}; first: {}",
                    counts.failures,
                    tally.first_failure().unwrap_or_default()
                );
            }
            return Ok(counts);
        }
        last_good = (counts, elapsed);
        line.update(&row(counts, elapsed, RowState::Running(elapsed)));
    }
}

/// The share a step observed must be what its weight says: inside the exact binomial
/// acceptance region for the request count (a correct split falls outside with probability at
/// most [`FALSE_ALARM_PER_CHECK`]).
fn judge(weight: u32, counts: StepCounts) -> anyhow::Result<()> {
    if counts.requests == 0 {
        bail!("no user request completed at canaryWeight {weight}");
    }
    let (lo, hi) = binomial_bounds(counts.requests, f64::from(weight) / 10_000.0);
    if !(lo..=hi).contains(&counts.canary) {
        bail!(
            "at canaryWeight {weight} ({}) canary served {} of {} user requests ({:.2}%), outside \
             the accepted range [{lo}, {hi}] (exact binomial, false alarms {FALSE_ALARM_PER_CHECK:e}): \
             the split is not what the weight says",
            percent(weight),
            counts.canary,
            counts.requests,
            100.0 * counts.canary as f64 / counts.requests as f64
        );
    }
    Ok(())
}

fn summary(out: &Display, results: &[StepResult], options: &Options) {
    out.section("Summary");
    out.line(&out.dim("  target  observed   canary / requests   accepted range  non-2xx   push"));
    let mut total = StepCounts::default();
    for r in results {
        let c = r.counts;
        total.requests += c.requests;
        total.canary += c.canary;
        total.failures += c.failures;
        let (lo, hi) = binomial_bounds(c.requests, f64::from(r.weight_bp) / 10_000.0);
        let n = c.requests.max(1) as f64;
        let range = format!("{:.1}–{:.1}%", 100.0 * lo as f64 / n, 100.0 * hi as f64 / n);
        let push = r
            .push_ms
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_else(|| "initial".to_owned());
        out.line(&format!(
            "  {:>6}  {:>8}  {:>7} / {:>8}   {:<14}  {:>7}   {:<7}  {}",
            percent(r.weight_bp),
            format!("{:.2}%", 100.0 * c.canary as f64 / n),
            group(c.canary),
            group(c.requests),
            range,
            group(c.failures),
            push,
            out.green("✓"),
        ));
    }
    let last = results.last().map(|r| r.weight_bp).unwrap_or(0);
    let outcome = match last {
        10_000 => format!("canary {} promoted to 100%", out.canary(CANARY_HASH)),
        0 => format!("traffic back on stable {}", out.stable(STABLE_HASH)),
        w => format!("canary {} at {}", out.canary(CANARY_HASH), percent(w)),
    };
    out.blank();
    out.line(&format!(
        "{} {outcome} with {} live config pushes",
        out.green("✓"),
        results.len().saturating_sub(1),
    ));
    out.line(&format!(
        "  {} user requests from {} keep-alive clients, {} non-2xx",
        group(total.requests),
        options.clients,
        group(total.failures),
    ));
}
