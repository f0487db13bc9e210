//! `wasm-canary-cluster up <dir>`: starts the control plane the tests use and leaves it
//! running for a human (`make cluster-up`). `cluster-down.sh` stops it.

use std::path::PathBuf;
use std::process::ExitCode;

use canary_cluster::{kube_version, ControlPlane};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [command, dir] if command == "up" => PathBuf::from(dir),
        _ => {
            eprintln!("usage: wasm-canary-cluster up <dir>");
            return ExitCode::from(2);
        }
    };
    match up(dir).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn up(dir: PathBuf) -> canary_cluster::Result<()> {
    let plane = ControlPlane::start_detachable(&dir).await?;
    let timings = plane.timings();
    let server = plane.server_url().to_owned();
    let kubeconfig = plane.kubeconfig_path().to_owned();
    let pids = plane.pids();
    let dir = plane.detach()?;
    println!("Kubernetes {} control plane at {server}", kube_version()?);
    println!(
        "  ready in {:.1}s (kube-apiserver {:.1}s, kube-controller-manager {:.1}s, then Istio CRDs)",
        timings.ready.as_secs_f64(),
        timings.apiserver_ready.as_secs_f64(),
        timings.controller_manager_ready.as_secs_f64(),
    );
    for (name, pid) in pids {
        println!(
            "  {name}: pid {pid}, log {}",
            dir.join(format!("{name}.log")).display()
        );
    }
    println!("  kubeconfig: {}", kubeconfig.display());
    println!("Stop it with `make cluster-down`.");
    Ok(())
}
