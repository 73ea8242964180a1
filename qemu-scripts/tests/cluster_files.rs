//! Cluster files: every example in qemu-scripts/examples/clusters runs with
//! `shmos cluster --file` and every node succeeds (under the accelerator
//! `SHMOS_ACCEL` selects); broken files are refused before anything boots,
//! with the line and the field named.

mod common;

use common::Tool;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest run of one example (its nodes' own timeouts are 60 s).
const RUN: Duration = Duration::from_secs(150);

fn examples() -> Vec<PathBuf> {
    let dir = shmos::repo_root().join("qemu-scripts/examples/clusters");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_cluster_file_runs_and_every_node_succeeds() {
    let kernel = common::kernel();
    let files = examples();
    assert!(
        files.len() >= 6,
        "expected the demo examples, found {files:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        let started = Instant::now();
        let tool = Tool::start(&[
            "cluster",
            "--json",
            "--kernel",
            kernel.to_str().unwrap(),
            "--file",
            file.to_str().unwrap(),
        ]);
        let done = tool.finish(RUN);
        let name = file.file_name().unwrap().to_string_lossy();
        let json: serde_json::Value = match serde_json::from_str(&done.stdout) {
            Ok(json) => json,
            Err(e) => {
                failures.push(format!(
                    "{name}: no JSON report ({e}), status {:?}\nstdout:\n{}\nstderr:\n{}",
                    done.code, done.stdout, done.stderr
                ));
                continue;
            }
        };
        let nodes = json["nodes"].as_array().cloned().unwrap_or_default();
        let bad: Vec<_> = nodes.iter().filter(|n| n["outcome"] != "success").collect();
        if done.code != Some(0) || nodes.is_empty() || !bad.is_empty() {
            let mut report = format!("{name}: status {:?}", done.code);
            for n in bad {
                report.push_str(&format!(
                    "\n  node {}: {} ({}); missing lines {}\n--- node {} console ---\n{}",
                    n["node"],
                    n["outcome"],
                    n["exit"].as_str().unwrap_or(""),
                    n["missing"],
                    n["node"],
                    n["tail"].as_str().unwrap_or("")
                ));
            }
            failures.push(report);
        } else {
            println!(
                "{name}: {} nodes succeeded in {:.1} s",
                nodes.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Writes `text` to a cluster file and runs `shmos cluster --file` on it
/// plus `extra` flags; returns (status, stderr).
fn refused(text: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, text).unwrap();
    let mut args = vec![
        "cluster",
        "--kernel",
        "/nonexistent",
        "--file",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let done = Tool::start(&args).finish(Duration::from_secs(30));
    (done.code, done.stderr)
}

#[test]
fn broken_cluster_files_are_refused_with_the_line_and_the_problem() {
    // (what is broken, file, what the message must say)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "missing field",
            "nodes = 3\n\n[[app]]\nargs = \"100\"\n",
            &["line 3", "field `app[0]`", "missing field `name`"],
        ),
        (
            "missing node count",
            "# no nodes\nshm_size = \"16M\"\n",
            &["missing field `nodes`"],
        ),
        (
            "wrong type",
            "nodes = 3\nplain = \"yes\"\n",
            &["line 2, column 9", "field `plain`", "invalid type"],
        ),
        (
            "wrong type in a list",
            "nodes = 3\n[[app]]\nname = \"counter\"\nnodes = [0, \"one\"]\n",
            &["line 4", "field `app[0].nodes[1]`", "invalid type"],
        ),
        (
            "unknown app",
            "nodes = 3\n\n[[app]]\nname = \"countr\"\n",
            &[
                "line 4, column 8",
                "field `app[0].name`",
                "unknown app \"countr\"",
                "counter",
            ],
        ),
        (
            "shared memory not a power of two",
            "nodes = 3\nshm_size = \"48M\"\n",
            &["line 2", "field `shm_size`", "power of two"],
        ),
        (
            "shared memory too small",
            "nodes = 3\nshm_size = \"64K\"\n",
            &["line 2", "field `shm_size`", "from 1M"],
        ),
        (
            "guest memory unparseable",
            "nodes = 3\nmemory = \"a lot\"\n",
            &["line 2", "field `memory`", "expected a number"],
        ),
        (
            "guest memory impossible",
            "nodes = 3\n[[node]]\nindex = 1\nmemory = \"4K\"\n",
            &["line 4", "field `node[0].memory`", "from 32 MiB"],
        ),
        (
            "too many nodes",
            "nodes = 12\n",
            &["line 1, column 9", "field `nodes`", "expected 1 to 8"],
        ),
        (
            "unknown field",
            "nodes = 3\ndisk = \"/var/shmos\"\n",
            &["line 2", "field `disk`", "unknown field `disk`"],
        ),
        (
            "disk size not whole blocks",
            "nodes = 3\ndisks = \"d\"\ndisk_size = \"1000\"\n",
            &["line 3, column 13", "field `disk_size`", "4 KiB blocks"],
        ),
        (
            "disk directory empty",
            "nodes = 3\ndisks = \"\"\n",
            &["line 2, column 9", "field `disks`", "temporary disks"],
        ),
        (
            "unknown field in a table",
            "nodes = 3\n[[app]]\nname = \"counter\"\nargv = \"1\"\n",
            &["line 4", "field `app[0].argv`", "unknown field `argv`"],
        ),
        (
            "node index out of range",
            "nodes = 3\n[[app]]\nname = \"counter\"\nnodes = [0, 1, 3]\n",
            &[
                "line 4, column 16",
                "field `app[0].nodes[2]`",
                "out of range",
                "0 to 2",
            ],
        ),
        (
            "override for a node that does not exist",
            "nodes = 2\n[[node]]\nindex = 2\n",
            &["line 3", "field `node[0].index`", "out of range"],
        ),
        (
            "TOML syntax",
            "nodes = 3\n[[app]\nname = \"counter\"\n",
            &["line 2"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, text, wanted) in cases {
        let (code, stderr) = refused(text, &[]);
        let missing: Vec<_> = wanted.iter().filter(|w| !stderr.contains(*w)).collect();
        if code != Some(2) || !missing.is_empty() {
            failures.push(format!(
                "{what}: status {code:?} (want 2), message lacks {missing:?}:\n{stderr}"
            ));
        } else {
            println!("{what}: {}", stderr.lines().next().unwrap_or(""));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn flags_override_the_file_and_are_checked_against_it() {
    let barrier = shmos::repo_root().join("qemu-scripts/examples/clusters/barrier.toml");
    // barrier.toml runs an app on node 2: two nodes cannot do that.
    let done = Tool::start(&[
        "cluster",
        "--kernel",
        "/nonexistent",
        "--file",
        barrier.to_str().unwrap(),
        "--nodes",
        "2",
    ])
    .finish(Duration::from_secs(30));
    assert_eq!(done.code, Some(2), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("app barrier runs on node 2, but the cluster has 2 nodes"),
        "{}",
        done.stderr
    );
    let (code, stderr) = refused("nodes = 2\n", &["--app", "nosuchapp"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown app \"nosuchapp\""), "{stderr}");
}
