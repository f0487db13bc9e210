//! A child process a test starts and owns: killed and reaped when dropped, also when the test
//! fails, together with the temporary folder holding its files.

#![allow(clippy::panic)]

use std::path::Path;
use std::process::{Child, Command};

/// See the module documentation.
pub struct OwnedProcess {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnedProcess {
    /// Spawns `command`; `dir` (its config, data and log files) lives as long as the process.
    pub fn spawn(command: &mut Command, dir: tempfile::TempDir) -> std::io::Result<OwnedProcess> {
        Ok(OwnedProcess {
            child: command.spawn()?,
            dir,
        })
    }

    /// The process's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A loopback address with a free port for the process to bind at once, picked below the
/// ephemeral range (`canary_cluster::ports`), where outgoing connections do not take it.
pub fn free_loopback_addr() -> std::net::SocketAddr {
    let port = canary_cluster::ports::free_loopback_port()
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"));
    std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))
}

/// The controller binary as a Deployment runs it, for namespace `namespace`, metrics on a free
/// loopback port, text logs; a test adds its own flags (leader election, identity, ...).
pub fn controller_command(kubeconfig: &Path, namespace: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasm-canary-controller"));
    command
        .env("KUBECONFIG", kubeconfig)
        .env_remove("POD_NAME")
        .args([
            "--namespace",
            namespace,
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ]);
    command
}
