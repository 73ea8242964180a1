//! Teardown on every path. Children run in their own process group with a
//! parent-death signal; their groups and our temp dirs are registered here so
//! that Ctrl-C/SIGTERM kills every child and removes every temp dir. Drop
//! impls handle the ordinary paths (return, error, panic).

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getppid};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tempfile::TempDir;

static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C/SIGTERM handler: kill all children, remove temp dirs, exit 130.
pub fn install_signal_handler() -> Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handler")?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            INTERRUPTED.store(true, Ordering::SeqCst);
            kill_all();
            for dir in DIRS.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                let _ = std::fs::remove_dir_all(dir);
            }
            eprintln!(
                "\nshmos: interrupted (signal {signal}): killed every child, removed temp files"
            );
            std::process::exit(130);
        }
    });
    Ok(())
}

/// SIGKILLs every registered process group.
pub fn kill_all() {
    for &pgid in GROUPS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    }
}

/// A child in its own process group, killed (with its group) on drop or interrupt.
///
/// The parent-death signal fires when the *thread* that spawned the child
/// exits, so spawn from a thread that outlives the child (e.g. the main thread).
pub struct Guarded {
    child: Child,
    status: Option<ExitStatus>,
}

impl Guarded {
    /// Spawns `cmd` in a new process group with PR_SET_PDEATHSIG = SIGKILL.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        let parent = std::process::id() as i32;
        cmd.process_group(0);
        // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // If we died between fork and prctl, no signal will ever come.
                if getppid().as_raw() != parent {
                    return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // A pid is its own group id after process_group(0).
        GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        if INTERRUPTED.load(Ordering::SeqCst) {
            kill_all(); // the handler ran before this child was registered
        }
        Ok(Guarded {
            child,
            status: None,
        })
    }

    /// The child, to take its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Process id (and process group id) of the child.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Reaps the child if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none()
            && let Some(status) = self.child.try_wait()?
        {
            self.reaped(status);
        }
        Ok(self.status)
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        match self.status {
            Some(status) => Ok(status),
            None => {
                let status = self.child.wait()?;
                self.reaped(status);
                Ok(status)
            }
        }
    }

    /// SIGKILLs the child's whole process group and reaps the child.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if self.status.is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        }
        self.wait()
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.status = Some(status);
        // Unregister at once: a reaped pid may be reused by an unrelated process.
        GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&g| g != self.child.id());
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A temporary directory, removed on drop and also on Ctrl-C/SIGTERM.
pub struct Workdir(TempDir);

impl Workdir {
    /// Creates `$TMPDIR/shmos-XXXXXX`.
    pub fn new() -> Result<Self> {
        Self::new_in(std::env::temp_dir())
    }

    /// Creates `DIR/shmos-XXXXXX` (a cluster's lives in /dev/shm, where its
    /// shared memory file is).
    pub fn new_in(parent: impl AsRef<Path>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("shmos-")
            .tempdir_in(parent.as_ref())
            .with_context(|| {
                format!(
                    "creating a temporary directory in {}",
                    parent.as_ref().display()
                )
            })?;
        DIRS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.path().to_owned());
        Ok(Workdir(dir))
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        // The TempDir field removes the directory after this.
        DIRS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| d != self.0.path());
    }
}
