//! Prints the CanaryRollout CRD as YAML; with `--out-dir DIR`, writes every CRD file the
//! controller defines into DIR (`make crd`: `crdgen --out-dir controller/crds`) and says which
//! ones changed. The tests never write: they only compare these files with the types.
use std::path::PathBuf;

use anyhow::Context;
use canary_controller::crd_yaml::crd_files;
use clap::Parser;
use kube::CustomResourceExt;

#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Write every CRD file here instead of printing the CanaryRollout CRD.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(dir) = args.out_dir else {
        print!(
            "{}",
            serde_yaml::to_string(&canary_controller::crd::CanaryRollout::crd())?
        );
        return Ok(());
    };
    for file in crd_files() {
        let path = dir.join(file.file);
        let generated = file.yaml()?;
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed == generated {
            println!("{}: unchanged", path.display());
            continue;
        }
        std::fs::write(&path, generated).with_context(|| format!("writing {}", path.display()))?;
        println!("{}: regenerated", path.display());
    }
    Ok(())
}
