//! Prints the CanaryRollout CRD as YAML (`make crd` writes it to controller/crds/).
use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    print!(
        "{}",
        serde_yaml::to_string(&canary_controller::crd::CanaryRollout::crd())?
    );
    Ok(())
}
