//! The kernel command line: space-separated `key` or `key=value` words.
//!
//! Known keys: `node=N` (this node's id), `test` (run the kernel tests),
//! `test.only=A,B` (only those tests, in that order), `test.skip=K` (resume
//! after the K-th selected test), `test.demo_failures` (also register two
//! deliberately broken tests, for the harness's own test). The cluster check
//! (see `cluster::smoke`): `cluster.wait_live=N`, `cluster.live_within_ms=MS`,
//! `cluster.ring=NODE:VECTOR`, `cluster.expect_ring=VECTOR`,
//! `cluster.watch_rejoin=NODE`, `cluster.stay`. The doorbell benchmark
//! (nodes 0 and 1): `bench.doorbell=bare|shmos`, `bench.iterations=N`.
//! The raw disk benchmark: `bench.disk=MIB` (write MIB MiB to the
//! virtio-blk disk in 4 KiB blocks, flush, print the time, power off).
//! `boot.exit`: power off with success as soon as the command line is read
//! (the baseline of the boot-time benchmark). `quiet`: no banner and no PCI
//! listing (each console byte costs ~10 µs under TCG; an appliance that
//! boots for one app need not pay for them).
//! Unknown words are ignored.
//!
//! Apps (see `crate::apps`): `app=NAME` runs the embedded app NAME on this
//! node (repeatable: each word starts one more instance); `apps=A,B,C`
//! starts several at once. An app's argument string follows a colon, with
//! `+` standing for a space (the command line splits at spaces):
//! `app=spin:a+5+20` runs `spin` with arguments `a 5 20`. `NAME.args=ARGS`
//! gives every instance of NAME that has no inline arguments the string
//! ARGS (same `+` rule). With apps, the node runs them after joining the
//! cluster (and after `cluster.wait_live=N` nodes are live, if given) instead
//! of the cluster check, prints `node N: all apps finished` and powers off
//! with success only if every app exited with code 0.

/// One app instance the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppSpec {
    /// The embedded app's name.
    pub name: &'static str,
    /// Its argument string as written (`+` for spaces); `None` when the
    /// word gave none (then `NAME.args=` applies, if present).
    pub raw_args: Option<&'static str>,
}

/// An argument string as the app sees it: `+` becomes a space.
pub fn decode_app_args(raw: &str) -> alloc::string::String {
    raw.replace('+', " ")
}

/// The parsed command line.
#[derive(Debug, Default, Clone)]
pub struct Args {
    /// The whole line, for the keys read on demand (apps).
    pub line: &'static str,
    /// This node's id.
    pub node: u32,
    /// Run the kernel tests instead of the normal boot.
    pub test: bool,
    /// Comma-separated test names to run, when given.
    pub test_only: Option<&'static str>,
    /// How many selected tests to skip (they ran in an earlier boot).
    pub test_skip: usize,
    /// Include the deliberately failing and faulting tests.
    pub test_demo_failures: bool,
    /// Wait until this many nodes are live.
    pub cluster_wait_live: Option<u16>,
    /// `cluster.heartbeat_ms=N`: the heartbeat timeout this node writes if
    /// it initialises the shared memory.
    pub cluster_heartbeat_ms: Option<u64>,
    /// Fail unless they are live this many ms after boot.
    pub cluster_live_within_ms: Option<u64>,
    /// Ring (node, vector) once all are live.
    pub cluster_ring: Option<(u16, u16)>,
    /// Wait for a doorbell on this vector.
    pub cluster_expect_ring: Option<u16>,
    /// Stay until this node dies and rejoins.
    pub cluster_watch_rejoin: Option<u16>,
    /// Never power off (the victim of a kill test).
    pub cluster_stay: bool,
    /// Run the doorbell round-trip benchmark on this path.
    pub bench_doorbell: Option<crate::cluster::bench::Path>,
    /// Timed round trips.
    pub bench_iterations: usize,
    /// Write this many MiB to the disk, timed, then power off.
    pub bench_disk: Option<u64>,
    /// Power off at once: the boot benchmark's exit-at-once kernel.
    pub boot_exit: bool,
    /// Skip the banner and the PCI listing.
    pub quiet: bool,
    /// `dsm.copies=N`: disks holding each durable DSM page (default 2).
    pub dsm_copies: Option<u16>,
    /// `dsm.ram=PAGES`: DSM pages this node keeps in RAM before paging
    /// out (default: half the kernel heap).
    pub dsm_ram_pages: Option<usize>,
    /// `dsm.migrate=N`: read requests in a row from one group that move a
    /// page's ownership (0: never; default 3).
    pub dsm_migrate: Option<u32>,
    /// `dsm.groups=G0.G1.…`: the group of node 0, 1, … (migration and
    /// replica placement prefer the same group).
    pub dsm_groups: Option<&'static str>,
}

impl Args {
    /// Parses the command line; malformed values are reported and ignored.
    pub fn parse(line: &'static str) -> Args {
        let mut args = Args {
            line,
            bench_iterations: 1000,
            ..Args::default()
        };
        for word in line.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match key {
                "node" => args.node = number(key, value).unwrap_or(0),
                "test" => args.test = true,
                "boot.exit" => args.boot_exit = true,
                "quiet" => args.quiet = true,
                "dsm.copies" => args.dsm_copies = number(key, value),
                "dsm.ram" => args.dsm_ram_pages = number(key, value),
                "dsm.migrate" => args.dsm_migrate = number(key, value),
                "dsm.groups" => args.dsm_groups = Some(value),
                "test.only" => args.test_only = Some(value),
                "test.skip" => args.test_skip = number(key, value).unwrap_or(0),
                "test.demo_failures" => args.test_demo_failures = true,
                "cluster.wait_live" => args.cluster_wait_live = number(key, value),
                "cluster.heartbeat_ms" => args.cluster_heartbeat_ms = number(key, value),
                "cluster.live_within_ms" => args.cluster_live_within_ms = number(key, value),
                "cluster.ring" => {
                    args.cluster_ring = value
                        .split_once(':')
                        .and_then(|(n, v)| Some((number(key, n)?, number(key, v)?)))
                }
                "cluster.expect_ring" => args.cluster_expect_ring = number(key, value),
                "cluster.watch_rejoin" => args.cluster_watch_rejoin = number(key, value),
                "cluster.stay" => args.cluster_stay = true,
                "bench.doorbell" => {
                    args.bench_doorbell = crate::cluster::bench::Path::parse(value);
                    if args.bench_doorbell.is_none() {
                        log::warn!(
                            "command line: bench.doorbell={value:?}: expected bare or shmos"
                        );
                    }
                }
                "bench.iterations" => args.bench_iterations = number(key, value).unwrap_or(1000),
                "bench.disk" => args.bench_disk = number(key, value),
                _ => {}
            }
        }
        args
    }
}

impl Args {
    /// The app instances to start, in command-line order.
    pub fn apps(&self) -> impl Iterator<Item = AppSpec> + '_ {
        self.line
            .split_ascii_whitespace()
            .filter_map(|word| {
                let (key, value) = word.split_once('=')?;
                matches!(key, "app" | "apps").then_some(value)
            })
            .flat_map(|value| value.split(','))
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once(':') {
                Some((name, raw)) => AppSpec {
                    name,
                    raw_args: Some(raw),
                },
                None => AppSpec {
                    name: item,
                    raw_args: None,
                },
            })
    }

    /// Whether the command line names any app.
    pub fn has_apps(&self) -> bool {
        self.apps().next().is_some()
    }

    /// The argument string for one instance of `spec` (decoded): inline, else
    /// from `NAME.args=`, else empty.
    pub fn app_args(&self, spec: &AppSpec) -> alloc::string::String {
        let raw = spec.raw_args.or_else(|| {
            self.line.split_ascii_whitespace().find_map(|word| {
                let (key, value) = word.split_once('=')?;
                (key.strip_suffix(".args")? == spec.name).then_some(value)
            })
        });
        decode_app_args(raw.unwrap_or(""))
    }
}

fn number<T: core::str::FromStr>(key: &str, value: &str) -> Option<T> {
    let parsed = value.parse().ok();
    if parsed.is_none() {
        log::warn!("command line: {key}={value:?} is not a number; ignored");
    }
    parsed
}

crate::kernel_test!(
    fn cmdline_parses_known_keys() {
        let a = Args::parse("node=3 test test.only=a,b test.skip=2 test.demo_failures extra=1");
        assert_eq!(a.node, 3);
        assert!(a.test && a.test_demo_failures);
        assert_eq!(a.test_only, Some("a,b"));
        assert_eq!(a.test_skip, 2);
        let c =
            Args::parse("cluster.wait_live=3 cluster.ring=2:1 cluster.expect_ring=1 cluster.stay");
        assert_eq!(
            (c.cluster_wait_live, c.cluster_ring, c.cluster_expect_ring),
            (Some(3), Some((2, 1)), Some(1))
        );
        assert!(c.cluster_stay);
        assert_eq!(
            Args::parse("cluster.ring=2").cluster_ring,
            None,
            "malformed: ignored"
        );
        let bad = Args::parse("node=x");
        assert_eq!(bad.node, 0);
        assert_eq!(Args::parse("bench.disk=64").bench_disk, Some(64));
        assert_eq!(Args::parse("bench.disk=lots").bench_disk, None);
        let hb = Args::parse("cluster.heartbeat_ms=5000").cluster_heartbeat_ms;
        assert_eq!(hb, Some(5000));
    }
);

crate::kernel_test!(
    fn cmdline_parses_apps_and_their_arguments() {
        let a = Args::parse(
            "node=1 app=hello apps=spin:a+5,spin:b app=sleeper: hello.args=x+y spin.args=z",
        );
        let specs: alloc::vec::Vec<_> = a.apps().collect();
        let names: alloc::vec::Vec<_> = specs.iter().map(|s| s.name).collect();
        assert_eq!(names, ["hello", "spin", "spin", "sleeper"]);
        assert!(a.has_apps());
        assert_eq!(a.app_args(&specs[0]), "x y", "from hello.args=");
        assert_eq!(a.app_args(&specs[1]), "a 5", "inline wins");
        assert_eq!(a.app_args(&specs[2]), "b");
        assert_eq!(a.app_args(&specs[3]), "", "an empty inline string");
        assert!(!Args::parse("node=0 test").has_apps());
        assert!(
            !Args::parse("app= apps=,").has_apps(),
            "empty names are skipped"
        );
    }
);
