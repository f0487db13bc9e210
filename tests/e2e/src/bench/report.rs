//! Medians, spreads, ratios and the markdown of `bench/RESULTS.md`.

use std::fmt::Write as _;

use super::topology::{Mode, Variant};

/// One measured run of one variant.
#[derive(Debug, Clone)]
pub struct Sample {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Envoy-under-test CPU (user + system) per request, microseconds.
    pub cpu_us_per_request: f64,
}

/// Everything measured in one mode.
#[derive(Debug, Clone)]
pub struct ModeResult {
    pub mode: Mode,
    /// The variants run, in run order.
    pub variants: Vec<Variant>,
    /// `samples[variant][rep]`, variants in [`ModeResult::variants`] order.
    pub samples: Vec<Vec<Sample>>,
    /// Resident memory of each Envoy under test after the runs, bytes.
    pub rss_bytes: Vec<u64>,
    /// The (c) filter's decision counters for the target service: (stable, canary); `None`
    /// when (c) was not run.
    pub decisions: Option<(u64, u64)>,
    /// `--paired`: the variants measured side by side with a base.
    pub paired: Vec<Paired>,
    /// 1-minute load average before and after the mode's runs.
    pub load_before: f64,
    pub load_after: f64,
}

/// One variant loaded at the same time as a base variant (`--paired`), both Envoys sharing the
/// Envoy CPU: the per-rep differences of CPU per request.
#[derive(Debug, Clone)]
pub struct Paired {
    pub variant: Variant,
    pub base: Variant,
    /// `variant` minus `base`, Envoy CPU us per request, one per rep.
    pub diffs: Vec<f64>,
}

/// The machine and build the numbers come from.
#[derive(Debug, Clone)]
pub struct Context {
    pub date: String,
    pub host_cpu: String,
    pub nproc: usize,
    pub kernel: String,
    pub envoy_version: String,
    pub rustc_version: String,
    pub git: String,
    pub filter: FileInfo,
    pub noop: FileInfo,
    pub load_command: String,
    pub reps: usize,
    pub warmup_secs: u64,
    pub envoy_cpu: u32,
    pub load_cpu: u32,
    pub target_host: String,
}

#[derive(Debug, Clone)]
pub struct FileInfo {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

impl ModeResult {
    /// The samples of `v`; none when it was not run.
    fn of(&self, v: Variant) -> &[Sample] {
        self.variants
            .iter()
            .position(|x| *x == v)
            .and_then(|i| self.samples.get(i))
            .map_or(&[], Vec::as_slice)
    }

    fn ran(&self, v: Variant) -> bool {
        !self.of(v).is_empty()
    }

    /// Ratio of median CPU per request, and the range of the same ratio within each rep.
    pub fn cpu_ratio(&self, num: Variant, den: Variant) -> (f64, f64, f64) {
        let per_rep: Vec<f64> = self
            .of(num)
            .iter()
            .zip(self.of(den))
            .map(|(n, d)| n.cpu_us_per_request / d.cpu_us_per_request)
            .collect();
        let (lo, hi) = min_max(&per_rep);
        (self.median_cpu(num) / self.median_cpu(den), lo, hi)
    }

    fn values(&self, v: Variant, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        self.of(v).iter().map(f).collect()
    }

    pub fn median_rps(&self, v: Variant) -> f64 {
        median(&self.values(v, |s| s.requests_per_second))
    }

    pub fn median_cpu(&self, v: Variant) -> f64 {
        median(&self.values(v, |s| s.cpu_us_per_request))
    }

    /// Throughput ratio of medians, and the range of the same ratio within each rep (the two
    /// runs of a rep are neighbours in time, so this range shows how steady the ratio is).
    pub fn rps_ratio(&self, num: Variant, den: Variant) -> (f64, f64, f64) {
        let per_rep: Vec<f64> = self
            .of(num)
            .iter()
            .zip(self.of(den))
            .map(|(n, d)| n.requests_per_second / d.requests_per_second)
            .collect();
        let (lo, hi) = min_max(&per_rep);
        (self.median_rps(num) / self.median_rps(den), lo, hi)
    }

    /// CPU us/request difference of medians, and its per-rep range.
    pub fn cpu_delta(&self, num: Variant, den: Variant) -> (f64, f64, f64) {
        let per_rep: Vec<f64> = self
            .of(num)
            .iter()
            .zip(self.of(den))
            .map(|(n, d)| n.cpu_us_per_request - d.cpu_us_per_request)
            .collect();
        let (lo, hi) = min_max(&per_rep);
        (self.median_cpu(num) - self.median_cpu(den), lo, hi)
    }
}

fn spread(values: &[f64], decimals: usize) -> String {
    let (lo, hi) = min_max(values);
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        median(values),
        lo,
        hi,
        d = decimals
    )
}

/// The generated part of `bench/RESULTS.md`.
/// The filter's request path timed outside Envoy (`filter/core/examples/request_path.rs`),
/// nanoseconds per request: (parse, lookup, decide, total).
#[derive(Debug, Clone, Default)]
pub struct RequestPath {
    pub native: Option<[f64; 4]>,
    pub v8: Option<[f64; 4]>,
    /// The same for (c), (c1), (c200) and (u).
    pub by_variant: Vec<VariantPath>,
    /// Why a column is missing, if one is.
    pub note: Option<String>,
}

/// The request path of one variant's config and request: native and V8 timings, as
/// [`RequestPath`]'s.
#[derive(Debug, Clone, Copy)]
pub struct VariantPath {
    pub variant: Variant,
    pub native: Option<[f64; 4]>,
    pub v8: Option<[f64; 4]>,
}

pub fn markdown(ctx: &Context, modes: &[ModeResult], path: &RequestPath) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmark results\n");
    let _ = writeln!(
        s,
        "Written by `make bench` (`tests/e2e/src/bin/bench.rs`); how to read it: `bench/README.md`.\n"
    );
    headline_section(&mut s, modes);
    scale_section(&mut s, modes);
    paired_section(&mut s, modes);
    request_path_section(&mut s, path);
    setup_section(&mut s, ctx, modes);
    s
}

/// The modes in which every one of `needed` ran: a table left without one of its variants
/// (`--variants`) is left out rather than printed with NaN.
fn that_ran<'a>(modes: &'a [ModeResult], needed: &[Variant]) -> Vec<&'a ModeResult> {
    modes
        .iter()
        .filter(|m| needed.iter().all(|v| m.ran(*v)))
        .collect()
}

/// The headline table needs every one of (a), (b), (c), (c'), (d); a run of fewer (`--variants`)
/// leaves it out rather than print NaN.
fn headline_section(s: &mut String, modes: &[ModeResult]) {
    let modes = that_ran(
        modes,
        &[
            Variant::NoFilter,
            Variant::NoopWasm,
            Variant::Canary,
            Variant::CanaryWriteAll,
            Variant::NativeWeighted,
        ],
    );
    if modes.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Headline\n");
    let _ = writeln!(
        s,
        "| mode | c/a req/s | c/b req/s | c/d req/s | filter CPU us/req, c − a | c − b | no-op wasm, b − a | c'/b req/s | c' − b |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for m in modes {
        let ca = m.rps_ratio(Variant::Canary, Variant::NoFilter);
        let cb = m.rps_ratio(Variant::Canary, Variant::NoopWasm);
        let cd = m.rps_ratio(Variant::Canary, Variant::NativeWeighted);
        let dca = m.cpu_delta(Variant::Canary, Variant::NoFilter);
        let dcb = m.cpu_delta(Variant::Canary, Variant::NoopWasm);
        let dba = m.cpu_delta(Variant::NoopWasm, Variant::NoFilter);
        let lb = m.rps_ratio(Variant::CanaryWriteAll, Variant::NoopWasm);
        let dlb = m.cpu_delta(Variant::CanaryWriteAll, Variant::NoopWasm);
        let _ = writeln!(
            s,
            "| {} | {:.3} | **{:.3}** | {:.3} | {:+.2} | **{:+.2}** | {:+.2} | **{:.3}** | **{:+.2}** |",
            m.mode.as_str(),
            ca.0,
            cb.0,
            cd.0,
            dca.0,
            dcb.0,
            dba.0,
            lb.0,
            dlb.0
        );
    }
    let _ = writeln!(
        s,
        "\nRatios are of median throughput; CPU differences are of median Envoy CPU per request.\n"
    );
}

fn setup_section(s: &mut String, ctx: &Context, modes: &[ModeResult]) {
    let _ = writeln!(s, "## Setup\n");
    let _ = writeln!(s, "- Date: {}", ctx.date);
    let _ = writeln!(
        s,
        "- Machine: {} CPUs (nproc), `{}`, Linux {}",
        ctx.nproc, ctx.host_cpu, ctx.kernel
    );
    let _ = writeln!(
        s,
        "- Envoy: `{}`, runtime `envoy.wasm.runtime.v8`",
        ctx.envoy_version
    );
    let _ = writeln!(s, "- rustc: `{}`; commit `{}`", ctx.rustc_version, ctx.git);
    for (what, f) in [("Filter (c)", &ctx.filter), ("No-op filter (b)", &ctx.noop)] {
        let _ = writeln!(
            s,
            "- {what}: `{}`, {} bytes ({:.1} KiB), sha256 `{}`",
            f.path,
            f.bytes,
            f.bytes as f64 / 1024.0,
            f.sha256
        );
    }
    let _ = writeln!(
        s,
        "- Envoy under test: `--concurrency 1`, pinned to CPU {}; load generator (and, in upstream mode, the upstream Envoy) on CPU {}",
        ctx.envoy_cpu, ctx.load_cpu
    );
    let _ = writeln!(
        s,
        "- Load, per run: `{} http://127.0.0.1:<port>/`",
        ctx.load_command
    );
    let _ = writeln!(
        s,
        "- {} reps per variant and mode, interleaved a b c d a b c d …, after one {} s warm-up run per variant (not counted); median across reps, (min–max) in brackets",
        ctx.reps, ctx.warmup_secs
    );
    let _ = writeln!(
        s,
        "- Request: `Host: {}` (service 7 of 20), with a user-agent and a cookie header. No header route matches (all 3 of the service's routes, exact + regex + cookie, are evaluated: the worst case) and there is no sticky key (`x-user-id`), so the weight draw decides (canary weight 10%).",
        ctx.target_host
    );
    let _ = writeln!(
        s,
        "- CPU per request: the Envoy-under-test process's utime + stime (`/proc/<pid>/stat`) over the run, divided by the requests wrk completed."
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "Variants:\n");
    let _ = writeln!(
        s,
        "- (a) no filter; routes: `x-canary-subset: canary` → canary, default → stable"
    );
    let _ = writeln!(
        s,
        "- (b) a no-op proxy-wasm filter (`tests/e2e/noop-filter`), same routes"
    );
    let _ = writeln!(
        s,
        "- (c) wasm-canary, client mode, 20 services × 4 hosts, 2–3 header routes each, sticky header, default settings (the decision header written for canary decisions only, no hash header); same routes"
    );
    let _ = writeln!(
        s,
        "- (c') the same config with `writeStableDecision: true`: stable decisions are written too, so every request pays a header write and a route re-match; same routes"
    );
    let _ = writeln!(
        s,
        "- (d) no filter, Envoy's own weighted draw: `weighted_clusters` 90/10 in upstream mode; in direct mode (no clusters to weigh) a `runtime_fraction` 10% route match"
    );
    let _ = writeln!(
        s,
        "- (c1) and (c200): (c) with a config of 1 service (service 7 alone) and of 200 services (services 0–199, built the same way); same request, same routes"
    );
    let _ = writeln!(
        s,
        "- (u) (c)'s filter and 20-service config; the request's `Host` is `{}`, which no service covers (the filter reads the headers, finds no service, removes nothing); same routes",
        super::topology::UNCOVERED_HOST
    );
    let _ = writeln!(s);

    for m in modes {
        let _ = writeln!(s, "## Mode: {}\n", m.mode.as_str());
        let what = match m.mode {
            Mode::Direct => "Routes answer with `direct_response`: the request never leaves the Envoy under test, so its CPU is all that is measured.",
            Mode::Upstream => "Routes proxy to a second Envoy (`direct_response`, one worker, on the load CPU), as a sidecar proxies to its pod.",
        };
        let _ = writeln!(
            s,
            "{what} Load average (1 min): {:.2} before, {:.2} after.\n",
            m.load_before, m.load_after
        );
        let _ = writeln!(
            s,
            "| variant | req/s | p50 ms | p99 ms | Envoy CPU us/request | Envoy RSS MiB |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for (i, v) in m.variants.iter().enumerate() {
            let _ = writeln!(
                s,
                "| ({}) {} | {} | {} | {} | {} | {:.1} |",
                v.letter(),
                v.label(),
                spread(&m.values(*v, |x| x.requests_per_second), 0),
                spread(&m.values(*v, |x| x.p50_ms), 3),
                spread(&m.values(*v, |x| x.p99_ms), 3),
                spread(&m.values(*v, |x| x.cpu_us_per_request), 2),
                m.rss_bytes.get(i).copied().unwrap_or(0) as f64 / (1024.0 * 1024.0)
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "| comparison | req/s ratio (per-rep range) | CPU us/request difference (per-rep range) |");
        let _ = writeln!(s, "|---|---|---|");
        for (num, den) in [
            (Variant::Canary, Variant::NoFilter),
            (Variant::Canary, Variant::NoopWasm),
            (Variant::Canary, Variant::NativeWeighted),
            (Variant::CanaryWriteAll, Variant::NoopWasm),
            (Variant::NoopWasm, Variant::NoFilter),
            (Variant::NativeWeighted, Variant::NoFilter),
            (Variant::CanaryManyServices, Variant::CanaryOneService),
            (Variant::Canary, Variant::CanaryOneService),
            (Variant::CanaryOneService, Variant::NoopWasm),
            (Variant::Uncovered, Variant::NoFilter),
            (Variant::Uncovered, Variant::NoopWasm),
        ] {
            if !m.ran(num) || !m.ran(den) {
                continue;
            }
            let r = m.rps_ratio(num, den);
            let d = m.cpu_delta(num, den);
            let _ = writeln!(
                s,
                "| {}/{} | {:.3} ({:.3}–{:.3}) | {:+.2} ({:+.2}–{:+.2}) |",
                num.letter(),
                den.letter(),
                r.0,
                r.1,
                r.2,
                d.0,
                d.1,
                d.2
            );
        }
        if let Some((stable, canary)) = m.decisions {
            let total = stable + canary;
            let _ = writeln!(
                s,
                "\nThe (c) filter decided {total} requests of the target service in this mode (warm-up included): {stable} stable, {canary} canary ({:.2}% canary; configured 10%), all by weight draw.",
                if total > 0 { 100.0 * canary as f64 / total as f64 } else { 0.0 }
            );
        }
        let _ = writeln!(s);
    }
}

/// The issue-12 goals: one filter for every rollout must cost about the same with 200 services
/// as with 1 (c200/c1 <= 1.1), and a host no rollout covers must cost next to nothing over the
/// no-op filter (u − b <= +0.3 us).
fn scale_section(s: &mut String, modes: &[ModeResult]) {
    let modes = that_ran(
        modes,
        &[
            Variant::NoFilter,
            Variant::NoopWasm,
            Variant::CanaryOneService,
            Variant::CanaryManyServices,
            Variant::Uncovered,
        ],
    );
    if modes.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## Services in the one config, and hosts no rollout covers\n"
    );
    let _ = writeln!(
        s,
        "| mode | CPU us/req c1 | c (20) | c200 | c200/c1 CPU (per-rep range) | c200/c1 req/s | u − a us | u − b us (per-rep range) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for m in modes {
        let c = if m.ran(Variant::Canary) {
            format!("{:.2}", m.median_cpu(Variant::Canary))
        } else {
            "–".to_owned()
        };
        let cpu = m.cpu_ratio(Variant::CanaryManyServices, Variant::CanaryOneService);
        let rps = m.rps_ratio(Variant::CanaryManyServices, Variant::CanaryOneService);
        let ua = m.cpu_delta(Variant::Uncovered, Variant::NoFilter);
        let ub = m.cpu_delta(Variant::Uncovered, Variant::NoopWasm);
        let _ = writeln!(
            s,
            "| {} | {:.2} | {c} | {:.2} | **{:.3}** ({:.3}–{:.3}) | {:.3} | {:+.2} | **{:+.2}** ({:+.2}–{:+.2}) |",
            m.mode.as_str(),
            m.median_cpu(Variant::CanaryOneService),
            m.median_cpu(Variant::CanaryManyServices),
            cpu.0,
            cpu.1,
            cpu.2,
            rps.0,
            ua.0,
            ub.0,
            ub.1,
            ub.2
        );
    }
    let _ = writeln!(
        s,
        "\nGoals (issue 12): c200/c1 CPU per request at most 1.1; u − b at most +0.3 us. CPU is the whole Envoy's per request, so the ratio includes Envoy's own work.\n"
    );
}

fn paired_section(s: &mut String, modes: &[ModeResult]) {
    if modes.iter().all(|m| m.paired.is_empty()) {
        return;
    }
    let _ = writeln!(s, "## Side by side (`--paired`)\n");
    let _ = writeln!(
        s,
        "Each variant's Envoy loaded at the same time as the base's, both on the Envoy CPU: the difference of their CPU per request in each rep, so a drift in machine speed cancels out.\n"
    );
    let _ = writeln!(
        s,
        "| mode | difference | CPU us/request, median (per-rep range) | reps |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for m in modes {
        for p in &m.paired {
            let (lo, hi) = min_max(&p.diffs);
            let _ = writeln!(
                s,
                "| {} | ({}) {} − ({}) {} | **{:+.2}** ({:+.2}–{:+.2}) | {} |",
                m.mode.as_str(),
                p.variant.letter(),
                p.variant.label(),
                p.base.letter(),
                p.base.label(),
                median(&p.diffs),
                lo,
                hi,
                p.diffs.len()
            );
        }
    }
    let _ = writeln!(s);
}

fn request_path_section(s: &mut String, path: &RequestPath) {
    let _ = writeln!(s, "## The filter's own work per request, outside Envoy\n");
    let _ = writeln!(
        s,
        "The same config and request as (c), timed by `filter/core/examples/request_path.rs` \
         (fastest of 7 rounds of 200,000): natively, and built for wasm32-wasip1 with the filter's \
         profile and run under Node's V8 (Envoy runs V8's optimising tier too, `--no-liftoff`). \
         What (c) − b adds on top of this is host work: the header-map host call and its \
         allocation callback into the guest, the header write and route re-match on canary \
         decisions.\n"
    );
    let _ = writeln!(
        s,
        "| ns per request | parse headers | find service | decide | all three |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (label, row) in [
        ("native (x86-64)", path.native),
        ("wasm in V8 (Node)", path.v8),
    ] {
        match row {
            Some([p, l, d, t]) => {
                let _ = writeln!(s, "| {label} | {p:.1} | {l:.1} | {d:.1} | **{t:.1}** |");
            }
            None => {
                let _ = writeln!(s, "| {label} | – | – | – | – |");
            }
        }
    }
    if !path.by_variant.is_empty() {
        let _ = writeln!(
            s,
            "\nBy the number of services in the config, and for a host no service covers (the same \
             request; (u) decides nothing, so its time is parsing, the failed lookup and the check \
             for client-sent decision headers):\n"
        );
        let _ = writeln!(
            s,
            "| ns per request | find service, native | all, native | find service, V8 | all, V8 |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        let cell = |row: Option<[f64; 4]>, i: usize| {
            row.map_or_else(|| "–".to_owned(), |r| format!("{:.1}", r[i]))
        };
        for row in &path.by_variant {
            let _ = writeln!(
                s,
                "| ({}) {} | {} | {} | {} | **{}** |",
                row.variant.letter(),
                row.variant.label(),
                cell(row.native, 1),
                cell(row.native, 3),
                cell(row.v8, 1),
                cell(row.v8, 3)
            );
        }
    }
    if let Some(note) = &path.note {
        let _ = writeln!(s, "\n{note}");
    }
    let _ = writeln!(s);
}
