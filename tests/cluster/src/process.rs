//! One control-plane process: spawned with its output in a log file, killed on drop.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::{Error, Result};

/// How long a [`Process`] lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Killed when the owner drops it. Shares the test's process group, so Ctrl-C on
    /// `cargo test` stops it as well.
    Owned,
    /// In its own process group, so it outlives the program that started it once
    /// [`crate::ControlPlane::detach`] is called (`make cluster-up`).
    Detachable,
}

#[derive(Debug)]
pub(crate) struct Process {
    pub name: &'static str,
    pub log: PathBuf,
    child: Child,
    keep_running: bool,
    /// How it was started, to start it again ([`Process::restart`]).
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    lifetime: Lifetime,
}

impl Process {
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        dir: &Path,
        lifetime: Lifetime,
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(Error::io(format!("creating {}", log.display())))?;
        let child = Self::start_child(name, program, args, dir, lifetime, out)?;
        Ok(Self {
            name,
            log,
            child,
            keep_running: false,
            program: program.to_owned(),
            args: args.to_vec(),
            dir: dir.to_owned(),
            lifetime,
        })
    }

    /// SIGKILL, then the same command again, its output appended to the same log: a crash
    /// and the restart a supervisor (kubelet, systemd) would make.
    pub(crate) fn restart(&mut self) -> Result<()> {
        self.stop();
        let out = File::options()
            .append(true)
            .open(&self.log)
            .map_err(Error::io(format!("opening {}", self.log.display())))?;
        self.child = Self::start_child(
            self.name,
            &self.program,
            &self.args,
            &self.dir,
            self.lifetime,
            out,
        )?;
        Ok(())
    }

    fn start_child(
        name: &'static str,
        program: &Path,
        args: &[String],
        dir: &Path,
        lifetime: Lifetime,
        out: File,
    ) -> Result<Child> {
        let log = dir.join(format!("{name}.log"));
        let err = out
            .try_clone()
            .map_err(Error::io(format!("opening {}", log.display())))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if lifetime == Lifetime::Detachable {
            command.process_group(0);
        }
        command.spawn().map_err(Error::io(format!(
            "starting {name} ({}), log {}",
            program.display(),
            log.display()
        )))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of the log if the process has exited.
    pub(crate) fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::ProcessExited {
                process: self.name,
                status: status.to_string(),
                log: self.log.clone(),
                tail: log_tail(&self.log, 25),
            }),
            Err(source) => Err(Error::Io {
                action: format!("checking on {}", self.name),
                source,
            }),
        }
    }

    /// Leaves the process running when this handle is dropped.
    pub(crate) fn detach(&mut self) {
        self.keep_running = true;
    }

    /// SIGKILL and reap. Control-plane state lives in a throw-away folder, so nothing
    /// needs a graceful shutdown.
    pub(crate) fn stop(&mut self) {
        if self.keep_running {
            return;
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let total = text.lines().count();
    text.lines()
        .skip(total.saturating_sub(lines))
        .collect::<Vec<_>>()
        .join("\n")
}
