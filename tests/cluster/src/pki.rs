//! Certificates and keys for one control plane, made with the `openssl` command.
//!
//! P-256 keys (fast to generate), valid for 2 days: every control plane gets new ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The files in `<dir>/pki`.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub controller_manager_cert: PathBuf,
    pub controller_manager_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

/// Subject Alternative Names of the API server's serving certificate: loopback, plus the
/// names and service IP that in-cluster clients would use.
const APISERVER_SANS: &str = "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1";

impl Pki {
    pub(crate) fn generate(dir: &Path) -> Result<Self> {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let path = |name: &str| dir.join(name);
        let pki = Self {
            ca_cert: path("ca.crt"),
            apiserver_cert: path("apiserver.crt"),
            apiserver_key: path("apiserver.key"),
            admin_cert: path("admin.crt"),
            admin_key: path("admin.key"),
            controller_manager_cert: path("controller-manager.crt"),
            controller_manager_key: path("controller-manager.key"),
            service_account_key: path("service-account.key"),
            service_account_pub: path("service-account.pub"),
        };
        let ca_key = path("ca.key");

        openssl("CA certificate", |cmd| {
            cmd.args([
                "req",
                "-x509",
                "-subj",
                "/CN=wasm-canary-test-ca",
                "-keyout",
            ])
            .arg(&ca_key)
            .arg("-out")
            .arg(&pki.ca_cert)
        })?;
        let leaf = |step: &str,
                    subject: &str,
                    usage: &str,
                    sans: Option<&str>,
                    cert: &Path,
                    key: &Path| {
            openssl(step, |cmd| {
                cmd.args(["req", "-x509", "-subj", subject, "-CA"])
                    .arg(&pki.ca_cert)
                    .arg("-CAkey")
                    .arg(&ca_key)
                    .arg("-keyout")
                    .arg(key)
                    .arg("-out")
                    .arg(cert)
                    .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                    .args(["-addext", "keyUsage=critical,digitalSignature"])
                    .args(["-addext", &format!("extendedKeyUsage={usage}")]);
                if let Some(sans) = sans {
                    cmd.args(["-addext", &format!("subjectAltName={sans}")]);
                }
                cmd
            })
        };
        leaf(
            "kube-apiserver serving certificate",
            "/CN=kube-apiserver",
            "serverAuth",
            Some(APISERVER_SANS),
            &pki.apiserver_cert,
            &pki.apiserver_key,
        )?;
        // system:masters: the admin the tests act as.
        leaf(
            "admin client certificate",
            "/O=system:masters/CN=wasm-canary-admin",
            "clientAuth",
            None,
            &pki.admin_cert,
            &pki.admin_key,
        )?;
        // The user the bootstrap RBAC policy grants system:kube-controller-manager to.
        leaf(
            "kube-controller-manager client certificate",
            "/CN=system:kube-controller-manager",
            "clientAuth",
            None,
            &pki.controller_manager_cert,
            &pki.controller_manager_key,
        )?;
        openssl("service-account signing key", |cmd| {
            cmd.args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&pki.service_account_key)
        })?;
        openssl("service-account public key", |cmd| {
            cmd.args(["pkey", "-pubout", "-in"])
                .arg(&pki.service_account_key)
                .arg("-out")
                .arg(&pki.service_account_pub)
        })?;
        Ok(pki)
    }
}

/// Runs `openssl`; `req` commands get a new unencrypted P-256 key and a 2-day validity.
fn openssl(step: &str, build: impl FnOnce(&mut Command) -> &mut Command) -> Result<()> {
    let mut cmd = Command::new("openssl");
    build(&mut cmd);
    if cmd.get_args().next().is_some_and(|first| first == "req") {
        cmd.args([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ]);
    }
    let output = cmd.output().map_err(Error::io(format!(
        "running openssl for the {step} (install it: apt-get install -y openssl)"
    )))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Openssl {
            step: step.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
