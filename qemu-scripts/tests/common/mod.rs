//! Runs the `shmos` binary itself from integration tests, under a timeout,
//! in its own process group: on timeout it gets SIGTERM first, so that its
//! own handler kills its QEMUs and removes its files, then SIGKILL.

#![allow(dead_code)] // each test file uses part of this

use shmos::cleanup::Guarded;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// The kernel, built once per test binary (a no-op build when fresh).
pub fn kernel() -> PathBuf {
    static KERNEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KERNEL
        .get_or_init(|| {
            shmos::host::ensure_qemu().unwrap_or_else(|e| panic!("{e:#}"));
            shmos::cargo::build_kernel(&shmos::repo_root()).unwrap_or_else(|e| panic!("{e:#}"))
        })
        .clone()
}

/// A running `shmos` with its output arriving line by line.
pub struct Tool {
    process: Guarded,
    /// stdout lines, as they come.
    pub stdout: Receiver<String>,
    stderr: thread::JoinHandle<String>,
}

/// How a `shmos` run ended.
pub struct Finished {
    /// Exit status; None when it had to be killed.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Tool {
    /// Starts `shmos ARGS` (SHMOS_ACCEL passes through from the environment).
    pub fn start(args: &[&str]) -> Tool {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmos"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = Guarded::spawn(&mut cmd).expect("starting shmos");
        let out = process.child().stdout.take().unwrap();
        let mut err = process.child().stderr.take().unwrap();
        let (tx, stdout) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Tool {
            process,
            stdout,
            stderr,
        }
    }

    /// Waits for the first stdout line containing `needle`, up to `timeout`;
    /// returns it with every line before it.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> (Option<String>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return (Some(line), seen),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        (None, seen)
    }

    /// Waits for the tool to exit; after `timeout`, SIGTERM, then SIGKILL.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let mut code = None;
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                code = status.code();
                break;
            }
            if Instant::now() >= deadline {
                let pid = nix::unistd::Pid::from_raw(self.process.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let grace = Instant::now() + Duration::from_secs(5);
                while self.process.try_wait().unwrap().is_none() && Instant::now() < grace {
                    thread::sleep(Duration::from_millis(50));
                }
                let _ = self.process.kill();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let stdout: Vec<String> = self.stdout.try_iter().collect();
        Finished {
            code,
            stdout: stdout.join("\n"),
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}
