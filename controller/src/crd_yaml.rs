//! The CRD YAML committed under `controller/crds/`, generated from the Rust types. One list,
//! so what `crdgen --out-dir controller/crds` writes (`make crd`) and what the tests check
//! fresh are the same files.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::analysis::{AnalysisTemplate, ClusterAnalysisTemplate};
use crate::crd::CanaryRollout;

/// One committed CRD file.
#[derive(Debug, Clone)]
pub struct CrdFile {
    /// File name under `controller/crds/`.
    pub file: &'static str,
    /// The resource definition the Rust types generate.
    pub crd: CustomResourceDefinition,
}

impl CrdFile {
    /// The file's text: the definition as YAML.
    pub fn yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(&self.crd)
    }
}

/// Every CRD the controller defines, with the file it is committed in.
pub fn crd_files() -> Vec<CrdFile> {
    vec![
        CrdFile {
            file: "canaryrollout.yaml",
            crd: CanaryRollout::crd(),
        },
        CrdFile {
            file: "analysistemplate.yaml",
            crd: AnalysisTemplate::crd(),
        },
        CrdFile {
            file: "clusteranalysistemplate.yaml",
            crd: ClusterAnalysisTemplate::crd(),
        },
    ]
}
