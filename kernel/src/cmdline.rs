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
//! Unknown words are ignored.

/// The parsed command line.
#[derive(Debug, Default, Clone)]
pub struct Args {
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
}

impl Args {
    /// Parses the command line; malformed values are reported and ignored.
    pub fn parse(line: &'static str) -> Args {
        let mut args = Args { bench_iterations: 1000, ..Args::default() };
        for word in line.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match key {
                "node" => args.node = number(key, value).unwrap_or(0),
                "test" => args.test = true,
                "test.only" => args.test_only = Some(value),
                "test.skip" => args.test_skip = number(key, value).unwrap_or(0),
                "test.demo_failures" => args.test_demo_failures = true,
                "cluster.wait_live" => args.cluster_wait_live = number(key, value),
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
                        log::warn!("command line: bench.doorbell={value:?}: expected bare or shmos");
                    }
                }
                "bench.iterations" => args.bench_iterations = number(key, value).unwrap_or(1000),
                _ => {}
            }
        }
        args
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
    }
);
