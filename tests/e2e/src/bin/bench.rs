//! `make bench`: what the wasm-canary filter costs Envoy, measured against no filter, a no-op
//! wasm filter and Envoy's native weighted routing, in one interleaved run. See bench/README.md.

#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/topology.rs"]
mod topology;
#[path = "../bench/wrk.rs"]
mod wrk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use wasm_canary_e2e::envoy::{Envoy, EnvoyOptions};
use wasm_canary_e2e::http::Client;

use report::{FileInfo, ModeResult, RequestPath, Sample, VariantPath};
use topology::{Mode, Modules, Variant};

const USAGE: &str = "\
Usage: bench [options]

Runs the same wrk load against Envoy with (a) no filter, (b) a no-op wasm filter, (c) the
wasm-canary filter (client mode, 20-service config), (c') the same writing stable decisions too,
(d) native weighted routing, (c1) and (c200) the filter with a 1- and a 200-service config, and
(u) (c)'s filter addressed with a host no service covers, interleaved a b c c' d c1 c200 u a b ...,
in two modes (direct, upstream); times the filter's request path outside Envoy (native and V8);
writes a markdown report.

Options:
  --out PATH          report file (default: print to stdout). Text below the line
                      '<!-- notes -->' in an existing file is kept.
  --reps N            measured runs per variant and mode (default 5)
  --secs S            seconds per run (default 6)
  --warmup S          one unmeasured run per variant first, seconds (default 2)
  --connections N     wrk connections (default 16)
  --modes LIST        comma-separated: direct,upstream (default both)
  --variants LIST     comma-separated letters of the variants to run (default all:
                      a,b,c,c',d,c1,c200,u); e.g. `--variants a,b,c1,c200,u` for the
                      service-count and uncovered-host comparison alone. Comparisons whose
                      variants were not run are left out of the report.
  --envoy-cpu N       CPU the Envoy under test is pinned to (default 0)
  --load-cpu N        CPU of wrk and of the upstream Envoy (default 1)
  --paired LETTER     also measure every other variant side by side with this one (e.g.
                      `--paired b`): in each rep the two Envoys share the Envoy CPU and
                      are loaded at the same time, so a change in machine speed hits both
                      alike; reported as per-rep CPU/request differences. Fine differences
                      (tenths of a microsecond) need this on a machine whose speed drifts
  --noop PATH         the no-op filter (default
                      target/wasm32-wasip1/wasm-release/wasm_canary_noop_filter.wasm)
  -h, --help          this text

Environment: ENVOY_BIN (default build/bin/envoy, `make setup`), WASM_CANARY_FILTER (default
build/wasm_canary_filter.wasm, `make wasm`).";

/// Marks where the hand-written part of the report starts; it survives regeneration.
const NOTES_MARKER: &str = "<!-- notes -->";

struct Args {
    out: Option<PathBuf>,
    reps: usize,
    secs: u64,
    warmup: u64,
    connections: u32,
    modes: Vec<Mode>,
    variants: Vec<Variant>,
    envoy_cpu: u32,
    load_cpu: u32,
    noop: PathBuf,
    paired: Option<Variant>,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let root = wasm_canary_e2e::workspace_root();
    let mut a = Args {
        out: None,
        reps: 5,
        secs: 6,
        warmup: 2,
        connections: 16,
        modes: vec![Mode::Direct, Mode::Upstream],
        variants: Variant::ALL.to_vec(),
        envoy_cpu: 0,
        load_cpu: 1,
        noop: root.join("target/wasm32-wasip1/wasm-release/wasm_canary_noop_filter.wasm"),
        paired: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => a.out = Some(PathBuf::from(value()?)),
            "--reps" => a.reps = value()?.parse().context("--reps")?,
            "--secs" => a.secs = value()?.parse().context("--secs")?,
            "--warmup" => a.warmup = value()?.parse().context("--warmup")?,
            "--connections" => a.connections = value()?.parse().context("--connections")?,
            "--envoy-cpu" => a.envoy_cpu = value()?.parse().context("--envoy-cpu")?,
            "--load-cpu" => a.load_cpu = value()?.parse().context("--load-cpu")?,
            "--noop" => a.noop = PathBuf::from(value()?),
            "--paired" => {
                let v = value()?;
                a.paired = Some(
                    Variant::from_letter(v.trim())
                        .with_context(|| format!("unknown variant {v:?}; see --help"))?,
                )
            }
            "--modes" => {
                a.modes = value()?
                    .split(',')
                    .map(|m| match m.trim() {
                        "direct" => Ok(Mode::Direct),
                        "upstream" => Ok(Mode::Upstream),
                        other => bail!("unknown mode {other:?} (direct, upstream)"),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--variants" => {
                a.variants = value()?
                    .split(',')
                    .map(|v| {
                        Variant::from_letter(v.trim())
                            .with_context(|| format!("unknown variant {v:?}; see --help"))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            other => bail!("unknown option {other:?}; see --help"),
        }
    }
    anyhow::ensure!(
        a.reps >= 1 && a.secs >= 1,
        "--reps and --secs must be at least 1"
    );
    anyhow::ensure!(!a.variants.is_empty(), "--variants names no variant");
    if let Some(base) = a.paired {
        anyhow::ensure!(
            a.variants.contains(&base) && a.variants.len() >= 2,
            "--paired {} needs ({}) and another variant in --variants (make bench: BENCH_PAIRED= runs without pairing)",
            base.letter(),
            base.letter()
        );
    }
    Ok(Some(a))
}

fn main() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let envoy = wasm_canary_e2e::envoy_binary()?;
    let modules = Modules {
        canary: wasm_canary_e2e::filter_wasm()?,
        noop: args.noop.clone(),
    };
    anyhow::ensure!(
        modules.noop.exists(),
        "{} not found: run `make bench` (it builds the no-op filter), or `cargo build --target wasm32-wasip1 --profile wasm-release -p wasm-canary-noop-filter`",
        modules.noop.display()
    );
    wrk::ensure_installed()?;
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(
        (args.envoy_cpu as usize) < nproc && (args.load_cpu as usize) < nproc,
        "this machine has {nproc} CPUs; choose --envoy-cpu and --load-cpu below {nproc}"
    );
    if args.envoy_cpu == args.load_cpu {
        eprintln!(
            "warning: Envoy and the load share CPU {}: ratios stay fair, absolute numbers do not",
            args.envoy_cpu
        );
    }
    let load_avg = load_average();
    if load_avg > 0.5 {
        eprintln!("warning: load average is {load_avg:.2}; other work on this machine adds noise (the interleaving keeps ratios fair)");
    }

    let load = wrk::Load {
        threads: 1,
        connections: args.connections,
        duration: Duration::from_secs(args.secs),
        cpu: args.load_cpu,
        headers: topology::request_headers(topology::target_host()),
    };
    let ctx = report::Context {
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        host_cpu: cpu_model(),
        nproc,
        kernel: command_line("uname", &["-r"]),
        envoy_version: command_line(&envoy.display().to_string(), &["--version"])
            .rsplit(" version: ")
            .next()
            .unwrap_or("?")
            .to_owned(),
        rustc_version: command_line("rustc", &["--version"]),
        git: git_description(),
        filter: file_info(&modules.canary)?,
        noop: file_info(&modules.noop)?,
        load_command: load.describe(),
        reps: args.reps,
        warmup_secs: args.warmup,
        envoy_cpu: args.envoy_cpu,
        load_cpu: args.load_cpu,
        target_host: topology::target_host(),
    };
    let variants = args.variants.len() as u64;
    let paired_runs = if args.paired.is_some() {
        variants - 1
    } else {
        0
    };
    let per_mode = variants * (args.reps as u64 * args.secs + args.warmup)
        + paired_runs * args.reps as u64 * args.secs;
    eprintln!(
        "bench: {} mode(s) x {variants} variants x {} reps x {} s (+{} s warm-up each): about {} s",
        args.modes.len(),
        args.reps,
        args.secs,
        args.warmup,
        per_mode * args.modes.len() as u64
    );

    let path = request_path();
    let mut results = Vec::new();
    for &mode in &args.modes {
        results.push(run_mode(mode, &modules, &load, &args)?);
    }

    let mut text = report::markdown(&ctx, &results, &path);
    match &args.out {
        Some(path) => {
            if let Some(notes) = std::fs::read_to_string(path)
                .ok()
                .and_then(|old| old.find(NOTES_MARKER).map(|i| old[i..].to_owned()))
            {
                text.push_str(&notes);
            } else {
                text.push_str(&format!("{NOTES_MARKER}\n"));
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("bench: wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn run_mode(
    mode: Mode,
    modules: &Modules,
    load: &wrk::Load,
    args: &Args,
) -> anyhow::Result<ModeResult> {
    let pinned = |cpu| EnvoyOptions {
        concurrency: 1,
        log_level: "warn",
        cpu: Some(cpu),
        ..EnvoyOptions::default()
    };
    let upstream = match mode {
        Mode::Upstream => Some(topology::start_upstream(&pinned(args.load_cpu))?),
        Mode::Direct => None,
    };
    let upstream_addr = match &upstream {
        Some(u) => Some(u.listener("app")?),
        None => None,
    };
    let variants = &args.variants;
    let envoys: Vec<Envoy> = variants
        .iter()
        .map(|&v| {
            topology::start_under_test(mode, v, modules, upstream_addr, &pinned(args.envoy_cpu))
                .with_context(|| format!("starting the Envoy of ({}) {}", v.letter(), v.label()))
        })
        .collect::<anyhow::Result<_>>()?;
    let addrs = envoys
        .iter()
        .map(|e| e.listener(topology::LISTENER))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Each variant's requests: the same headers, to its own host.
    let loads: Vec<wrk::Load> = variants
        .iter()
        .map(|v| wrk::Load {
            headers: topology::request_headers(v.host()),
            ..load.clone()
        })
        .collect();

    // Every variant must answer 200 before it is timed, and the filter must really be deciding.
    for ((v, addr), envoy) in variants.iter().zip(&addrs).zip(&envoys) {
        let r = Client::new(*addr).get(&v.host(), "/", &[])?;
        anyhow::ensure!(
            r.status == 200,
            "({}) {} answered {} to a probe: {}",
            v.letter(),
            v.label(),
            r.status,
            r.body
        );
        if v.decides() || *v == Variant::Uncovered {
            anyhow::ensure!(
                envoy.stat("wasmcustom.wasmcanary.config_accepted") >= 1,
                "({}) the canary filter did not accept its config; Envoy log:\n{}",
                v.letter(),
                envoy.log_tail(20)
            );
        }
    }
    // The (c) Envoy's decision counters are checked against the requests wrk completed.
    let counted = variants.iter().position(|v| *v == Variant::Canary);

    eprintln!("bench: {} mode: warm-up", mode.as_str());
    let mut canary_requests = 1;
    if args.warmup > 0 {
        for (i, addr) in addrs.iter().enumerate() {
            let warm = wrk::Load {
                duration: Duration::from_secs(args.warmup),
                ..loads[i].clone()
            };
            let r = wrk::run(&warm, *addr)?;
            if Some(i) == counted {
                canary_requests += r.requests;
            }
        }
    }

    let load_before = load_average();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for rep in 0..args.reps {
        for (i, v) in variants.iter().enumerate() {
            let envoy = &envoys[i];
            let cpu_before = envoy.cpu_seconds()?;
            let r = wrk::run(&loads[i], addrs[i])?;
            let cpu = envoy.cpu_seconds()? - cpu_before;
            anyhow::ensure!(
                r.errors == 0,
                "({}) {}: {} failed requests in rep {}",
                v.letter(),
                v.label(),
                r.errors,
                rep + 1
            );
            if Some(i) == counted {
                canary_requests += r.requests;
            }
            let sample = Sample {
                requests_per_second: r.requests_per_second,
                p50_ms: r.p50_ms,
                p99_ms: r.p99_ms,
                cpu_us_per_request: cpu * 1e6 / r.requests as f64,
            };
            eprintln!(
                "bench: {} rep {}/{} ({}) {:<16} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  {:.2} us CPU/req",
                mode.as_str(),
                rep + 1,
                args.reps,
                v.letter(),
                v.label(),
                sample.requests_per_second,
                sample.p50_ms,
                sample.p99_ms,
                sample.cpu_us_per_request
            );
            samples[i].push(sample);
        }
    }
    let paired = match args.paired {
        Some(base) => paired_runs(mode, base, variants, &envoys, &addrs, &loads, args.reps)?,
        None => Vec::new(),
    };
    let load_after = load_average();
    let rss_bytes = envoys
        .iter()
        .map(|e| e.rss_bytes())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let decisions = counted.map(|i| decision_counts(&envoys[i], canary_requests));
    Ok(ModeResult {
        mode,
        variants: variants.clone(),
        samples,
        rss_bytes,
        decisions,
        paired,
        load_before,
        load_after,
    })
}

/// `--paired`: each variant loaded at the same time as `base`, both Envoys on the one Envoy CPU
/// (the scheduler shares it), `reps` times. What the machine's speed does to one run it does to
/// the other, so the per-rep difference of CPU per request is steady where the difference of two
/// runs seconds apart is not.
fn paired_runs(
    mode: Mode,
    base: Variant,
    variants: &[Variant],
    envoys: &[Envoy],
    addrs: &[std::net::SocketAddr],
    loads: &[wrk::Load],
    reps: usize,
) -> anyhow::Result<Vec<report::Paired>> {
    let b = variants
        .iter()
        .position(|v| *v == base)
        .context("the paired base did not run")?;
    let mut out: Vec<report::Paired> = variants
        .iter()
        .filter(|v| **v != base)
        .map(|&variant| report::Paired {
            variant,
            base,
            diffs: Vec::new(),
        })
        .collect();
    for rep in 0..reps {
        for p in &mut out {
            let i = variants
                .iter()
                .position(|v| *v == p.variant)
                .context("a paired variant did not run")?;
            let before = (envoys[b].cpu_seconds()?, envoys[i].cpu_seconds()?);
            let (rb, ri) = std::thread::scope(|s| {
                let base_run = s.spawn(|| wrk::run(&loads[b], addrs[b]));
                let run = wrk::run(&loads[i], addrs[i]);
                (base_run.join(), run)
            });
            let rb = rb.map_err(|_| anyhow::anyhow!("the paired wrk thread panicked"))??;
            let ri = ri?;
            let cpu_b = envoys[b].cpu_seconds()? - before.0;
            let cpu_i = envoys[i].cpu_seconds()? - before.1;
            anyhow::ensure!(
                rb.errors == 0 && ri.errors == 0 && rb.requests > 0 && ri.requests > 0,
                "paired ({}) and ({}): {} and {} failed requests in rep {}",
                p.variant.letter(),
                base.letter(),
                ri.errors,
                rb.errors,
                rep + 1
            );
            let diff = cpu_i * 1e6 / ri.requests as f64 - cpu_b * 1e6 / rb.requests as f64;
            eprintln!(
                "bench: {} paired rep {}/{} ({}) − ({}) {:+.2} us CPU/req ({:.0} and {:.0} req/s)",
                mode.as_str(),
                rep + 1,
                reps,
                p.variant.letter(),
                base.letter(),
                diff,
                ri.requests_per_second,
                rb.requests_per_second
            );
            p.diffs.push(diff);
        }
    }
    Ok(out)
}

/// The target service's (stable, canary) decision counters. The filter may publish its counts
/// periodically, so this waits (bounded) until they cover the requests wrk saw completed.
fn decision_counts(envoy: &Envoy, at_least: u64) -> (u64, u64) {
    let service = format!("ns_svc-{}", topology::TARGET_SERVICE);
    let name = |subset: &str| format!("wasmcustom.wasmcanary.decision.{service}.{subset}.weight");
    let read = || {
        let stats = envoy.stats("wasmcanary.decision").unwrap_or_default();
        let get = |k: String| stats.get(&k).copied().unwrap_or(0);
        (get(name("stable")), get(name("canary")))
    };
    let start = std::time::Instant::now();
    loop {
        let (s, c) = read();
        if s + c >= at_least || start.elapsed() > Duration::from_secs(5) {
            return (s, c);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// HEAD, and whether the filter's sources differ from it (the measured .wasm was built from the
/// working tree).
fn git_description() -> String {
    let root = wasm_canary_e2e::workspace_root();
    let root = root.display().to_string();
    let head = command_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", &root, "diff", "--quiet", "HEAD", "--", "filter"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(false);
    if dirty {
        format!("{head} + uncommitted changes under filter/")
    } else {
        head
    }
}

fn file_info(path: &Path) -> anyhow::Result<FileInfo> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let sha256 = command_line("sha256sum", &[&path.display().to_string()])
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned();
    let root = wasm_canary_e2e::workspace_root();
    let shown = path
        .strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string();
    Ok(FileInfo {
        path: shown,
        bytes,
        sha256,
    })
}

/// Times the filter's request path outside Envoy, natively and in V8 (see
/// `filter/core/examples/request_path.rs`), for (c)'s config and request, then for (c1), (c200)
/// and (u). `make bench` builds both; a missing build or a missing `node` leaves its cells
/// empty with the reason, it does not stop the benchmark.
fn request_path() -> RequestPath {
    let root = wasm_canary_e2e::workspace_root();
    let native = root.join("target/release/examples/request_path");
    let wasm = root.join("target/wasm32-wasip1/wasm-release/examples/request_path.wasm");
    let mut notes = Vec::new();
    let mut run = |label: &str, cmd: &mut Command| -> Option<[f64; 4]> {
        eprintln!("bench: timing the request path ({label})");
        match cmd.output() {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let parsed = parse_request_path(&text);
                if parsed.is_none() {
                    notes.push(format!("{label}: unreadable output {text:?}"));
                }
                parsed
            }
            Ok(out) => {
                notes.push(format!(
                    "{label}: exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                None
            }
            Err(e) => {
                notes.push(format!("{label}: could not run ({e})"));
                None
            }
        }
    };
    let mut rows = Vec::new();
    for variant in [
        Variant::Canary,
        Variant::CanaryOneService,
        Variant::CanaryManyServices,
        Variant::Uncovered,
    ] {
        let services = match variant {
            Variant::CanaryOneService => topology::FEW_SERVICES,
            Variant::CanaryManyServices => topology::MANY_SERVICES,
            _ => topology::SERVICES,
        };
        let mut args = vec![topology::realistic_config(services, false)];
        args.extend(
            topology::envoy_request_headers(variant.host())
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}")),
        );
        let label = format!("({})", variant.letter());
        let native_row = run(
            &format!("{label} native"),
            Command::new(&native).args(&args),
        );
        let v8_row = run(
            &format!("{label} V8"),
            Command::new("node")
                .arg("--no-warnings")
                .arg(root.join("bench/wasi-run.mjs"))
                .arg(&wasm)
                .args(&args),
        );
        rows.push(VariantPath {
            variant,
            native: native_row,
            v8: v8_row,
        });
    }
    RequestPath {
        native: rows[0].native,
        v8: rows[0].v8,
        by_variant: rows,
        note: (!notes.is_empty()).then(|| {
            format!(
                "Not measured: {} (`make bench` builds both examples; the V8 row needs `node`).",
                notes.join("; ")
            )
        }),
    }
}

fn parse_request_path(text: &str) -> Option<[f64; 4]> {
    let line = text.lines().find(|l| l.starts_with("request_path "))?;
    let field = |name: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some([
        field("parse_ns")?,
        field("lookup_ns")?,
        field("decide_ns")?,
        field("total_ns")?,
    ])
}
