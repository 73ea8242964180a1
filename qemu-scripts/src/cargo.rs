//! Nested cargo runs: the apps and kernel builds (after making sure their
//! target is installed) and the host test run, plus parsing of cargo test's
//! summaries.

use crate::cleanup::Guarded;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The kernel's target triple.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Where `cargo build --release` in kernel/ puts the kernel (kernel/.cargo/config.toml).
pub fn kernel_elf(root: &Path) -> PathBuf {
    root.join("target/kernel")
        .join(KERNEL_TARGET)
        .join("release/shmos-kernel")
}

/// Where `cargo build --release` in apps/ puts the app ELFs (apps/.cargo/config.toml).
pub fn apps_dir(root: &Path) -> PathBuf {
    root.join("target/apps").join(KERNEL_TARGET).join("release")
}

/// Builds the apps, then the kernel that embeds them (streaming cargo's
/// output to stderr), and returns the kernel ELF's path.
pub fn build_kernel(root: &Path) -> Result<PathBuf> {
    let kernel_dir = root.join("kernel");
    ensure_target(&kernel_dir)?;
    // kernel/build.rs embeds what lands in apps_dir(root), its default.
    cargo_build(&root.join("apps"))?;
    cargo_build(&kernel_dir)?;
    let elf = kernel_elf(root);
    if !elf.is_file() {
        bail!("kernel build succeeded but {} is missing", elf.display());
    }
    Ok(elf)
}

/// `cargo build --release` in `dir` (kernel/ or apps/), for the kernel target.
fn cargo_build(dir: &Path) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--release"]).current_dir(dir);
    if std::io::stderr().is_terminal() {
        cmd.arg("--color=always"); // we pipe its stderr, which would turn colour off
    }
    // Host-side settings from the environment would override DIR/.cargo/config.toml:
    // RUSTFLAGS replaces the target rustflags (code model, relocation model) and a
    // target dir or target moves or breaks the artifact.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut cargo = Guarded::spawn(&mut cmd).context("cannot run cargo")?;
    // Echo from this thread so a test harness captures it and shows it on failure.
    // On a terminal, a spinner shows the latest line instead, and the whole
    // output is printed only if the build fails.
    let progress = crate::progress::Progress::new();
    let what = dir.file_name().map_or(dir.display().to_string(), |n| {
        n.to_string_lossy().into_owned()
    });
    let spinner = progress.spinner(&format!("building {what}"));
    let mut held = Vec::new();
    let stderr = cargo.child().stderr.take().expect("piped stderr");
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        if crate::progress::enabled() {
            spinner.set_message(&format!("building {what}: {}", strip_ansi(line.trim())));
            held.push(line);
        } else {
            eprintln!("{line}");
        }
    }
    let status = cargo.wait()?;
    spinner.clear();
    if !status.success() {
        for line in held {
            eprintln!("{line}");
        }
        bail!(
            "build in {} failed ({status}); cargo's output is above",
            dir.display()
        );
    }
    Ok(())
}

/// Installs the kernel target for the pinned toolchain (rustup 1.29 does not
/// do it from rust-toolchain.toml by itself); a no-op when present.
fn ensure_target(kernel_dir: &Path) -> Result<()> {
    let out = match Command::new("rustup")
        .args(["target", "add", KERNEL_TARGET])
        .current_dir(kernel_dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        // No rustup: the toolchain is managed some other way; let cargo judge.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context("running rustup"),
    };
    if !out.status.success() {
        bail!(
            "rustup target add {KERNEL_TARGET} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Totals of a `cargo test` run.
#[derive(Clone, Copy, Debug)]
pub struct HostTests {
    pub passed: u64,
    pub failed: u64,
    pub status: ExitStatus,
}

/// Runs `cargo test --workspace` in `root`, streaming its output, with `envs` set.
pub fn run_host_tests(root: &Path, envs: &[(&str, &str)]) -> Result<HostTests> {
    let mut cmd = Command::new("cargo");
    // Same target dir as the `cargo run` that started us: that cargo exec()s
    // this tool and its build-dir lock is closed on exec, so there is no
    // deadlock (checked with cargo 1.95), and debug artifacts are shared with
    // a plain `cargo test`.
    cmd.args(["test", "--workspace"]).current_dir(root);
    cmd.envs(envs.iter().copied());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut cargo = Guarded::spawn(&mut cmd).context("cannot run cargo")?;
    let stdout = cargo.child().stdout.take().expect("piped stdout");
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        println!("{line}");
        if let Some((p, f)) = parse_test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = cargo.wait()?;
    Ok(HostTests {
        passed,
        failed,
        status,
    })
}

/// Parses `test result: ok. 3 passed; 1 failed; ...` into (passed, failed).
pub fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let line = strip_ansi(line);
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_verdict, counts) = rest.split_once(". ")?;
    let mut passed = None;
    let mut failed = None;
    for part in counts.split(';') {
        match part.split_whitespace().collect::<Vec<_>>()[..] {
            [n, "passed"] => passed = n.parse().ok(),
            [n, "failed"] => failed = n.parse().ok(),
            _ => {}
        }
    }
    Some((passed?, failed?))
}

/// Removes ANSI escape sequences (colour codes) from a line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte(@..~)
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ok_summary() {
        let line = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(parse_test_result(line), Some((12, 0)));
    }

    #[test]
    fn parses_failed_summary() {
        let line = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s";
        assert_eq!(parse_test_result(line), Some((3, 2)));
    }

    #[test]
    fn parses_coloured_summary() {
        let line = "test result: \x1b[32mok\x1b[0m. 1 passed; 0 failed; 0 ignored";
        assert_eq!(parse_test_result(line), Some((1, 0)));
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(parse_test_result("test foo ... ok"), None);
        assert_eq!(parse_test_result("running 3 tests"), None);
        assert_eq!(parse_test_result("test result: garbage"), None);
    }
}
