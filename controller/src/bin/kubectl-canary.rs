//! `kubectl canary`: look at and steer `CanaryRollout`s, and convert Argo Rollouts to them.
//! On PATH as `kubectl-canary`, kubectl runs it as `kubectl canary ...`.
//!
//! Every action edits the resource exactly as a user could by hand (the promote annotation,
//! `spec.abort`, `spec.paused`); the controller does the rest.

// serde_json::Value indexing: reads return Null, never panic; writes only index objects built here.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use canary_controller::cli;
use canary_controller::cli::actions::{act, promote_patch, Action};
use canary_controller::cli::convert::{convert, parse_documents, ConvertOptions, DEFAULT_WASM_URL};
use canary_controller::cli::envoy::{read_split, ObservedSplit};
use canary_controller::cli::error::RolloutError;
use canary_controller::cli::status::{render, table, SplitView};
use canary_controller::crd::CanaryRollout;
use canary_controller::dashboard::{Dashboard, DashboardOptions, Scope, SplitSource, DEFAULT_PORT};
use canary_controller::reconcile::ROLLOUT_LABEL;
use canary_controller::steps::{format_weight, weight_basis_points, Promote};
use clap::{Args, Parser, Subcommand};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Look at and steer wasm-canary rollouts (CanaryRollout, wasmcanary.io/v1alpha1).
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-canary",
    bin_name = "kubectl canary",
    version,
    propagate_version = true
)]
struct Cli {
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show a rollout: steps (current one marked), weight, stable/canary hashes, ReplicaSet
    /// readiness, phase, message, conditions, and optionally the split the filter observed.
    Status(StatusArgs),
    /// List rollouts in the namespace (or all with -A).
    List {
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Finish the current pause step (annotation wasmcanary.io/promote=step); with --full, skip
    /// every remaining step and promote the canary to stable (wasmcanary.io/promote=full).
    Promote {
        /// Rollout name.
        name: String,
        /// Skip all remaining steps.
        #[arg(long)]
        full: bool,
    },
    /// Abort: all traffic back to stable at once (spec.abort: true); the canary scales down
    /// after abortScaleDownDelaySeconds.
    Abort {
        /// Rollout name.
        name: String,
    },
    /// Retry an aborted rollout from step 0 (spec.abort: false).
    Retry {
        /// Rollout name.
        name: String,
    },
    /// Hold the rollout at its current step (spec.paused: true); traffic stays as it is.
    Pause {
        /// Rollout name.
        name: String,
    },
    /// Continue a paused rollout (spec.paused: false).
    Resume {
        /// Rollout name.
        name: String,
    },
    /// Move to a weight now and hold there: inserts `setWeight W` and an indefinite pause after
    /// the current step (ending the pause the rollout waits in); promote continues the steps.
    SetWeight {
        /// Rollout name.
        name: String,
        /// Percentage, 0..100 (0.01 steps).
        weight: f64,
    },
    /// Serve a live web page of the rollouts: each one's phase, step, weight and health; for
    /// one rollout its steps, weight over time, observed split, versions with ReplicaSet
    /// readiness, header routes, analysis measurements and recent Events, with buttons that do
    /// what promote, promote --full, abort, retry, pause and resume do (each asks first).
    /// Changes show within a second. Listens on 127.0.0.1:3100 until Ctrl-C.
    Dashboard(DashboardArgs),
    /// Convert an Argo Rollout (canary, Istio subset routing) and its Istio objects into a
    /// CanaryRollout, DestinationRule, VirtualService and server WasmPlugin. Prints YAML on
    /// stdout; what could not be carried over goes to stderr.
    Convert(ConvertArgs),
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Rollout name.
    name: String,
    /// Keep watching: redraw in place on a terminal, one line per change otherwise.
    #[arg(short, long)]
    watch: bool,
    /// Seconds between refreshes under --watch.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Envoy admin URL of a CLIENT sidecar (e.g. http://127.0.0.1:15000 after
    /// `kubectl port-forward deploy/productpage-v1 15000`): shows the split the filter made.
    #[arg(long)]
    envoy_admin: Option<String>,
}

#[derive(Args, Debug)]
struct DashboardArgs {
    /// Show every namespace (default: -n, else the kubeconfig context's namespace).
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Port to listen on (0: any free port; the URL printed says which).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Address to listen on. Keep loopback unless you mean to share the dashboard: whoever
    /// reaches it can use it, buttons included unless --read-only.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// Show, never act: no buttons, and every action request is refused (403).
    #[arg(long)]
    read_only: bool,
    /// Envoy admin URL of a CLIENT sidecar (e.g. http://127.0.0.1:15000 after
    /// `kubectl port-forward deploy/productpage-v1 15000`): plots the split its filter made.
    #[arg(long, conflicts_with = "prometheus")]
    envoy_admin: Option<String>,
    /// Prometheus URL that scrapes the sidecars (e.g. http://127.0.0.1:9090 after
    /// `kubectl port-forward -n istio-system svc/prometheus 9090`): plots the split summed over
    /// every calling sidecar.
    #[arg(long)]
    prometheus: Option<String>,
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// YAML files (multi-document and v1 Lists accepted); `-` reads stdin. Repeat for the
    /// Rollout and the Istio objects.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Where Istio fetches the filter (oci://, https:// or file://).
    #[arg(long, default_value = None)]
    wasm_url: Option<String>,
    /// sha256 of the module, for https:// and file:// URLs.
    #[arg(long)]
    wasm_sha256: Option<String>,
    /// Labels of the workloads that CALL the service, `k=v[,k=v]` (the client WasmPlugin's
    /// selector). Default: every workload of the namespace.
    #[arg(long, value_parser = parse_labels)]
    client_selector: Option<BTreeMap<String, String>>,
    /// Header the filter writes and the VirtualService routes on.
    #[arg(long)]
    decision_header: Option<String>,
    /// The Kubernetes Service under canary (default: the DestinationRule's host).
    #[arg(long)]
    service: Option<String>,
    /// Leave analysis out (the rollout then runs WITHOUT metric checks). Without this flag the
    /// analysis is carried over and the controller refuses the rollout until it is removed.
    #[arg(long)]
    drop_analysis: bool,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("{p:?} is not key=value"))
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Convert(args) = &cli.command {
        return run_convert(args, cli.namespace.clone());
    }
    let (client, ns, server) = connect(&cli).await?;
    let context = cli.context.clone();
    let result = match cli.command {
        Command::Status(args) => status(&client, &ns, &args).await,
        Command::List { all_namespaces } => list(&client, &ns, all_namespaces).await,
        Command::Promote { name, full } => {
            run_action(
                &client,
                &ns,
                &name,
                if full {
                    Action::PromoteFull
                } else {
                    Action::Promote
                },
            )
            .await
        }
        Command::Abort { name } => run_action(&client, &ns, &name, Action::Abort).await,
        Command::Retry { name } => run_action(&client, &ns, &name, Action::Retry).await,
        Command::Pause { name } => run_action(&client, &ns, &name, Action::Pause).await,
        Command::Resume { name } => run_action(&client, &ns, &name, Action::Resume).await,
        Command::SetWeight { name, weight } => set_weight(&client, &ns, &name, weight).await,
        Command::Dashboard(args) => dashboard(client, &ns, &args).await,
        Command::Convert(_) => Ok(()),
    };
    result.map_err(|e| name_the_server(e, &server, context.as_deref()))
}

/// A request that never reached the API server (nothing listening, TLS refused) says which
/// server it tried and from which context: the usual cause is the wrong kubeconfig or context.
fn name_the_server(e: anyhow::Error, server: &str, context: Option<&str>) -> anyhow::Error {
    let unreachable = e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<kube::Error>(),
            Some(kube::Error::Service(_) | kube::Error::HyperError(_))
        )
    });
    if !unreachable {
        return e;
    }
    let from = context.map_or_else(
        || "the current context".to_owned(),
        |c| format!("context {c}"),
    );
    e.context(format!(
        "cannot reach the Kubernetes API server at {server} ({from}); check --context and --kubeconfig"
    ))
}

/// The client, the namespace to act in, and the API server's URL (for error messages).
async fn connect(cli: &Cli) -> Result<(Client, String, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options).await?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .context("loading the kubeconfig context")?,
        (None, None) => Config::infer()
            .await
            .context("no cluster configured: set KUBECONFIG or --kubeconfig, as for kubectl")?,
    };
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, ns, server))
}

/// An API error or refusal as the CLI reports it; a plain API error keeps its own chain, so
/// `name_the_server` finds an unreachable server in it.
fn explain(e: kube::Error, name: Option<&str>, ns: &str) -> anyhow::Error {
    reported(RolloutError::from_api(e, name, ns))
}

fn reported(e: RolloutError) -> anyhow::Error {
    match e {
        RolloutError::Kube(e) => anyhow::Error::new(e),
        other => anyhow::Error::new(other),
    }
}

async fn get_rollout(api: &Api<CanaryRollout>, name: &str, ns: &str) -> Result<CanaryRollout> {
    api.get(name).await.map_err(|e| explain(e, Some(name), ns))
}

/// promote/abort/retry/pause/resume: the library's one path, shared with the dashboard.
async fn run_action(client: &Client, ns: &str, name: &str, action: Action) -> Result<()> {
    let done = act(client, ns, name, action).await.map_err(reported)?;
    println!("{done}");
    Ok(())
}

/// `set-weight W`: the weight comes from the steps, so this edits the steps the way a user
/// would: `setWeight: W` and an indefinite `pause` are inserted right after the current step,
/// and a pause the rollout is waiting in is ended. The controller then moves traffic to W
/// (once enough canary pods are ready) and holds there until promoted; the remaining steps
/// follow as before.
async fn set_weight(client: &Client, ns: &str, name: &str, weight: f64) -> Result<()> {
    let bp = weight_basis_points(weight)
        .map_err(|e| anyhow!("{e}; give a percentage such as 10 or 0.5"))?;
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    let rollout = get_rollout(&api, name, ns).await?;
    let status = rollout.status.clone().unwrap_or_default();
    if status.canary_hash.is_none() {
        return Err(reported(RolloutError::NoCanary {
            name: name.to_owned(),
            ns: ns.to_owned(),
            phase: status.phase,
            what: "weigh",
        }));
    }
    if rollout.spec.abort || status.aborted {
        return Err(reported(RolloutError::Aborted {
            name: name.to_owned(),
            ns: ns.to_owned(),
        }));
    }
    let strategy = rollout.spec.strategy.effective();
    let steps = &strategy.steps;
    let current = status
        .current_step_index
        .and_then(|i| usize::try_from(i).ok())
        .unwrap_or(0)
        .min(steps.len());
    let waiting_in_pause = status.phase == canary_controller::crd::Phase::Paused
        && steps.get(current).is_some_and(|s| s.pause.is_some());
    let insert_at = if waiting_in_pause {
        current + 1
    } else {
        (current + 1).min(steps.len())
    };
    let mut new_steps: Vec<serde_json::Value> = steps
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()
        .map_err(|e| reported(RolloutError::Steps(e)))?;
    new_steps.insert(insert_at, serde_json::json!({"setWeight": weight}));
    new_steps.insert(insert_at + 1, serde_json::json!({"pause": {}}));
    let mut patch = serde_json::json!({"spec": {"strategy": {"canary": {"steps": new_steps}}}});
    if waiting_in_pause {
        patch["metadata"] = promote_patch(Promote::Step)["metadata"].take();
    }
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| explain(e, Some(name), ns))?;
    println!(
        "rollout {name}: steps {} and {} inserted (setWeight {}, pause until promoted){}; the controller moves traffic to {} once enough canary pods are ready. \
         Your manifest's steps now differ from the cluster's: add the two steps there too, or re-applying it removes them.",
        insert_at + 1,
        insert_at + 2,
        format_weight(bp),
        if waiting_in_pause { ", current pause ended" } else { " after the current step completes" },
        format_weight(bp)
    );
    Ok(())
}

/// `dashboard`: checks that the rollouts can be read (so a wrong context fails here, with the
/// usual sentences), serves until Ctrl-C, then stops gracefully.
async fn dashboard(client: Client, ns: &str, args: &DashboardArgs) -> Result<()> {
    let scope = if args.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(ns.to_owned())
    };
    let api: Api<CanaryRollout> = if args.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), ns)
    };
    api.list(&ListParams::default().limit(1))
        .await
        .map_err(|e| explain(e, None, ns))?;
    let split = match (&args.envoy_admin, &args.prometheus) {
        (Some(admin), _) => Some(SplitSource::EnvoyAdmin(admin.clone())),
        (None, Some(prometheus)) => Some(SplitSource::Prometheus(prometheus.clone())),
        (None, None) => None,
    };
    let addr = SocketAddr::new(args.address, args.port);
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {addr}, not loopback: whoever reaches it sees your rollouts{}",
            if args.read_only {
                ""
            } else {
                " and can promote or abort them (--read-only prevents that)"
            }
        );
    }
    let options = DashboardOptions {
        scope: scope.clone(),
        read_only: args.read_only,
        split,
    };
    let running = Dashboard::start(client, addr, options).await?;
    println!(
        "kubectl canary dashboard: {} ({}{}); Ctrl-C to stop",
        running.url(),
        scope.describe(),
        if args.read_only { ", read-only" } else { "" }
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    running.stop().await?;
    Ok(())
}

async fn list(client: &Client, ns: &str, all: bool) -> Result<()> {
    let api: Api<CanaryRollout> = if all {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), ns)
    };
    let rollouts = api
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, None, ns))?
        .items;
    if rollouts.is_empty() {
        let place = if all {
            "any namespace".to_owned()
        } else {
            format!("namespace {ns}")
        };
        println!("No CanaryRollouts in {place}. Convert an Argo Rollout with `kubectl canary convert -f rollout.yaml`.");
        return Ok(());
    }
    for line in table(&rollouts, all) {
        println!("{line}");
    }
    Ok(())
}

async fn snapshot(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<(CanaryRollout, Vec<ReplicaSet>)> {
    let api: Api<CanaryRollout> = Api::namespaced(client.clone(), ns);
    let rollout = get_rollout(&api, name, ns).await?;
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let mut sets = rs_api
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}")))
        .await
        .map_err(|e| explain(e, None, ns))?
        .items;
    sets.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    Ok((rollout, sets))
}

fn summary_line(rollout: &CanaryRollout, sets: &[ReplicaSet], split: &SplitView) -> String {
    let s = rollout.status.clone().unwrap_or_default();
    let ready = |hash: &Option<String>| {
        hash.as_ref()
            .and_then(|h| {
                sets.iter().find(|rs| {
                    rs.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("rollouts-pod-template-hash"))
                        == Some(h)
                })
            })
            .map(|rs| {
                format!(
                    "{}/{}",
                    rs.status
                        .as_ref()
                        .and_then(|st| st.ready_replicas)
                        .unwrap_or(0),
                    rs.spec.replicas.unwrap_or(0)
                )
            })
            .unwrap_or_else(|| "-".into())
    };
    let mut line = format!(
        "{} phase={:?} step={} weight={} stable={}({}) canary={}({})",
        chrono::Utc::now().format("%H:%M:%S"),
        s.phase,
        s.current_step.clone().unwrap_or_else(|| "-".into()),
        format_weight(s.canary_weight),
        s.stable_hash.clone().unwrap_or_else(|| "-".into()),
        ready(&s.stable_hash),
        s.canary_hash.clone().unwrap_or_else(|| "-".into()),
        ready(&s.canary_hash),
    );
    if let SplitView::Read {
        recent: Some(r), ..
    } = split
    {
        line.push_str(&format!(" observed: {}", cli::status::split_line(r)));
    }
    if let Some(m) = &s.message {
        line.push_str(&format!(" | {m}"));
    }
    line
}

async fn status(client: &Client, ns: &str, args: &StatusArgs) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    let interval = Duration::from_secs_f64(args.interval.max(0.2));
    let mut previous: Option<ObservedSplit> = None;
    let mut last_summary = String::new();
    let mut first = true;
    loop {
        let (rollout, sets) = snapshot(client, ns, &args.name).await?;
        let split = match &args.envoy_admin {
            None => SplitView::None,
            Some(admin) => match read_split(admin, ns, &rollout.spec.strategy.service()).await {
                Ok(total) => {
                    let recent = match (&total, &previous) {
                        (Some(t), Some(p)) => Some(t.since(p)),
                        _ => None,
                    };
                    previous = total.clone();
                    SplitView::Read {
                        admin: admin.clone(),
                        total,
                        recent,
                    }
                }
                Err(e) => SplitView::Failed(e.to_string()),
            },
        };
        let lines = render(&rollout, &sets, &split);
        let mut out = std::io::stdout().lock();
        if !args.watch {
            for l in &lines {
                writeln!(out, "{l}")?;
            }
            return Ok(());
        }
        if tty {
            // Home, clear to the end of the screen, draw: the display updates in place.
            write!(out, "\x1b[H\x1b[J")?;
            for l in &lines {
                writeln!(out, "{l}")?;
            }
            writeln!(
                out,
                "\n(refreshing every {:.1}s; Ctrl-C to stop)",
                interval.as_secs_f64()
            )?;
        } else {
            if first {
                for l in &lines {
                    writeln!(out, "{l}")?;
                }
            }
            let summary = summary_line(&rollout, &sets, &split);
            // The time prefix changes every refresh; compare the rest.
            let key = summary
                .split_once(' ')
                .map_or("", |(_, rest)| rest)
                .to_owned();
            if key != last_summary || matches!(split, SplitView::Read { .. }) {
                writeln!(out, "{summary}")?;
                last_summary = key;
            }
        }
        out.flush()?;
        first = false;
        drop(out);
        tokio::time::sleep(interval).await;
    }
}

fn run_convert(args: &ConvertArgs, namespace: Option<String>) -> Result<()> {
    let mut objects = Vec::new();
    for f in &args.files {
        let (text, source) = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading stdin")?;
            (s, "stdin".to_owned())
        } else {
            (
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
                f.display().to_string(),
            )
        };
        objects.extend(parse_documents(&text, &source)?);
    }
    let opts = ConvertOptions {
        namespace,
        wasm_url: args.wasm_url.clone(),
        client_selector: args.client_selector.clone(),
        decision_header: args.decision_header.clone(),
        service: args.service.clone(),
        drop_analysis: args.drop_analysis,
    };
    let mut conversion = convert(&objects, &opts)?;
    if let Some(sha) = &args.wasm_sha256 {
        for d in &mut conversion.documents {
            match d.object["kind"].as_str() {
                Some("CanaryRollout") => {
                    // Into the strategy the rollout has: indexing a missing one would add it.
                    let strategy = &mut d.object["spec"]["strategy"];
                    let kind = if strategy.get("blueGreen").is_some() {
                        "blueGreen"
                    } else {
                        "canary"
                    };
                    strategy[kind]["trafficRouting"]["wasm"]["wasmPlugin"]["sha256"] =
                        serde_json::json!(sha);
                }
                Some("WasmPlugin") => d.object["spec"]["sha256"] = serde_json::json!(sha),
                _ => {}
            }
        }
    } else if args
        .wasm_url
        .as_deref()
        .is_some_and(|u| !u.starts_with("oci://") && u != DEFAULT_WASM_URL)
    {
        conversion.notes.push(
            "https:// and file:// module URLs need --wasm-sha256 (Istio requires the digest)"
                .into(),
        );
    }
    print!("{}", conversion.to_yaml()?);
    let mut err = std::io::stderr().lock();
    if !conversion.notes.is_empty() {
        writeln!(err, "Not carried over / check before applying:")?;
        for n in &conversion.notes {
            writeln!(err, "  - {n}")?;
        }
    }
    Ok(())
}
