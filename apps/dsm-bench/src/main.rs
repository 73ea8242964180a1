//! DSM checks and figures on a cluster, by mode (the first argument):
//!
//! - `hostile`: `dsm_map`, `dsm_free` and `dsm_alloc` with ranges that are
//!   not allocated, not page-aligned, empty, in the directory space or past
//!   a range's end; each must fail with its named error. Prints
//!   `dsm-bench: node N: hostile: K calls refused by name` (after a
//!   barrier: a node's pages, directory pages included, leave with it).
//! - `spread MIB PER_NODE_MIB`: node 0 allocates a range of MIB MiB; every
//!   node writes PER_NODE_MIB MiB of its pages (page p belongs to the node
//!   of rank p mod nodes: the pages, and their owners, spread over the
//!   cluster), then reads back its own pages and one page of every MiB
//!   written by the others. Prints `dsm-bench: node N: spread: ... correct`.
//! - `migrate`: one page written by node 1, then by node 2; after each
//!   write every node prints the page's directory entry checksum and what
//!   it knows of the owner (`dsm_stat`):
//!   `dsm-bench: node N: migrate step S: entry=.. responsible=R owner-here=O managed-owner=M value=V`.
//! - `bench N`: node 1 writes 2N pages first; node 0 then times N read
//!   faults (copies from node 1) and N write faults that invalidate one
//!   reader (node 1), and, when node 2 is live and has read the other N
//!   pages, N write faults that invalidate two; prints
//!   `bench dsm-read-fault n=N value=NS unit=ns`,
//!   `bench dsm-write-fault-1 ...` and `bench dsm-write-fault-2 ...` (mean
//!   per fault); every node then checks every page.
//! - `disk N`: the disks under the DSM, on nodes that run with a RAM budget
//!   (`dsm.ram=PAGES`, at least [`SYNC_PAGES`] + [`SYNC_SLACK`]). Node 0
//!   rewrites every page of a 1 MiB range and times `dsm_sync` of it, K
//!   times (K = N / 50, at least 1); prints
//!   `bench dsm-sync-1mib n=K value=NS unit=ns` (mean per sync). Then it
//!   writes one word in each page of a range of twice the budget, or N / 50
//!   MiB (1 to 64) if more (the pages go out to the disks), syncs it
//!   (untimed), and reads every page back; from its paging counters
//!   (`dsm_info`: node 0 owns the pages and is responsible for the range,
//!   so it counts every page-out and page-in) it prints
//!   `bench dsm-page-out n=PAGES value=BYTES_PER_S unit=B/s` and
//!   `bench dsm-page-in ...` (pages counted x 4 KiB over the phase's
//!   time). It fails if a page of the MiB was paged out before its sync,
//!   if a counter did not move, or if a page reads back wrong. The other
//!   nodes hold the disk copies and wait in barriers.
#![no_std]
#![no_main]

use demo_common::{App, Check, DsmMapping, Outcome, PAGE, live_nodes, nodes_of, now};
use shmos_rt::{Error, println, sys};

shmos_rt::entry!(main);

/// Port of the setup message from node 0.
const PORT: u32 = 3;
/// First word of the setup message.
const MAGIC: u64 = u64::from_le_bytes(*b"DSMBENCH");
/// Words in a page.
const PAGE_WORDS: usize = (PAGE / 8) as usize;

fn main() -> i32 {
    demo_common::run("dsm-bench", dsm_bench)
}

fn dsm_bench(app: &App) -> Outcome<()> {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    match words.next() {
        Some("hostile") => hostile(app),
        Some("spread") => {
            let mib = demo_common::number(app, words.next(), "range MiB", 192)?;
            let per = demo_common::number(app, words.next(), "MiB per node", 8)?;
            spread(app, mib, per)
        }
        Some("migrate") => migrate(app),
        Some("bench") => {
            let n = demo_common::number(app, words.next(), "pages", 200)?;
            bench(app, n)
        }
        Some("disk") => {
            let n = demo_common::number(app, words.next(), "operations", 100)?;
            disk(app, n)
        }
        other => Err(app.fail(format_args!(
            "unknown mode {other:?} (hostile, spread, migrate, bench, disk)"
        ))),
    }
}

fn expect_err<T>(app: &App, what: &str, r: Result<T, Error>, want: Error) -> Outcome<()> {
    match r {
        Err(e) if e == want => Ok(()),
        Err(e) => Err(app.fail(format_args!("{what}: {e}, expected {want}"))),
        Ok(_) => Err(app.fail(format_args!("{what}: succeeded, expected {want}"))),
    }
}

fn hostile(app: &App) -> Outcome<()> {
    // Far from any range a generator hands out (node 63's data slice).
    let nowhere: u128 = (1 << 64) + (63 << 121) + (1 << 100);
    let g = sys::dsm_alloc(2 * PAGE).or_fail(app, "dsm_alloc of 2 pages")?;
    let checks: [(&str, Result<(), Error>, Error); 11] = [
        (
            "dsm_map of an unallocated range",
            sys::dsm_map(nowhere, PAGE, true).map(drop),
            Error::NotFound,
        ),
        (
            "dsm_map of an unaligned address",
            sys::dsm_map(g + 8, PAGE, true).map(drop),
            Error::InvalidArgument,
        ),
        (
            "dsm_map of an unaligned length",
            sys::dsm_map(g, 100, true).map(drop),
            Error::InvalidArgument,
        ),
        (
            "dsm_map of length 0",
            sys::dsm_map(g, 0, true).map(drop),
            Error::InvalidArgument,
        ),
        (
            "dsm_map past the range's end",
            sys::dsm_map(g, 3 * PAGE, true).map(drop),
            Error::NotFound,
        ),
        (
            "dsm_map of the directory root",
            sys::dsm_map(0, PAGE, true).map(drop),
            Error::NotFound,
        ),
        (
            "dsm_map at the top of the space",
            sys::dsm_map(u128::MAX - 4095, PAGE, true).map(drop),
            Error::NotFound,
        ),
        (
            "dsm_alloc of an unaligned length",
            sys::dsm_alloc(100).map(drop),
            Error::InvalidArgument,
        ),
        (
            "dsm_free of an unallocated range",
            sys::dsm_free(nowhere, PAGE),
            Error::NotFound,
        ),
        (
            "dsm_free of part of a range",
            sys::dsm_free(g, PAGE),
            Error::InvalidArgument,
        ),
        (
            "dsm_unmap of no mapping",
            sys::dsm_unmap(0x1000 as *mut u8),
            Error::NotFound,
        ),
    ];
    let n = checks.len();
    for (what, r, want) in checks {
        expect_err(app, what, r, want)?;
    }
    // The range still works, and goes away when freed.
    let m = DsmMapping::map(g, 2 * PAGE, true).or_fail(app, "dsm_map of the range")?;
    m.set(PAGE_WORDS, 42);
    app.ensure(
        m.get(PAGE_WORDS) == 42,
        format_args!("a store did not stay"),
    )?;
    m.unmap().or_fail(app, "dsm_unmap")?;
    sys::dsm_free(g, 2 * PAGE).or_fail(app, "dsm_free")?;
    expect_err(
        app,
        "dsm_map of a freed range",
        sys::dsm_map(g, PAGE, true).map(drop),
        Error::NotFound,
    )?;
    // The directory pages this node owns now leave with it: stay until
    // every node is done with the directory.
    sys::barrier().or_fail(app, "barrier after the checks")?;
    println!(
        "dsm-bench: node {}: hostile: {} calls refused by name",
        app.node,
        n + 1
    );
    Ok(())
}

fn rank_of(app: &App, nodes: u64) -> (u64, u64) {
    let k = u64::from(nodes.count_ones());
    let r = nodes_of(nodes).position(|x| x == app.node).unwrap_or(0) as u64;
    (r, k)
}

fn mark(p: u64) -> u64 {
    demo_common::splitmix64(p) | 1
}

fn spread(app: &App, mib: u64, per_node_mib: u64) -> Outcome<()> {
    let nodes = live_nodes(app)?;
    let (rank, k) = rank_of(app, nodes);
    let bytes = mib << 20;
    let pages = bytes / PAGE;
    let mine = (per_node_mib << 20) / PAGE;
    app.ensure(
        mine * k <= pages,
        format_args!("{k} x {per_node_mib} MiB do not fit {mib} MiB"),
    )?;
    let g = demo_common::share_dsm_range(app, nodes, PORT, MAGIC, bytes)?;
    let m = DsmMapping::map(g, bytes, true).or_fail(app, "dsm_map")?;
    sys::barrier().or_fail(app, "barrier before writing")?;
    // Pages i * k + rank for i < mine: interleaved over the whole range.
    let step = pages / (mine * k);
    let page_of = |i: u64, r: u64| (i * k + r) * step;
    let started = now(app)?;
    for i in 0..mine {
        let p = page_of(i, rank);
        m.set(p as usize * PAGE_WORDS, mark(p));
        m.set(p as usize * PAGE_WORDS + PAGE_WORDS - 1, p);
    }
    let ms = (now(app)? - started) / 1_000_000;
    sys::barrier().or_fail(app, "barrier after writing")?;
    let mut checked = 0u64;
    let per_mib = (1 << 20) / PAGE;
    for r in 0..k {
        for i in 0..mine {
            if r != rank && i % per_mib != 0 {
                continue;
            }
            let p = page_of(i, r);
            let (a, b) = (
                m.get(p as usize * PAGE_WORDS),
                m.get(p as usize * PAGE_WORDS + PAGE_WORDS - 1),
            );
            app.ensure(
                a == mark(p) && b == p,
                format_args!(
                    "page {p} (written by rank {r}) reads {a:#x}/{b}, not {:#x}/{p}",
                    mark(p)
                ),
            )?;
            checked += 1;
        }
    }
    sys::barrier().or_fail(app, "barrier after reading")?;
    println!(
        "dsm-bench: node {}: spread: range {mib} MiB, {} MiB written by {k} nodes ({mine} pages here in {ms} ms), {checked} pages read back correct",
        app.node,
        per_node_mib * k
    );
    m.unmap().or_fail(app, "dsm_unmap")
}

fn migrate(app: &App) -> Outcome<()> {
    let nodes = live_nodes(app)?;
    app.ensure(
        nodes & 7 == 7,
        format_args!("migrate needs nodes 0, 1 and 2"),
    )?;
    let g = demo_common::share_dsm_range(app, nodes, PORT, MAGIC, PAGE)?;
    let m = DsmMapping::map(g, PAGE, true).or_fail(app, "dsm_map")?;
    for (step, writer) in [(1u64, 1u16), (2, 2)] {
        sys::barrier().or_fail(app, "barrier before a write")?;
        if app.node == writer {
            m.set(0, 100 + step);
        }
        sys::barrier().or_fail(app, "barrier after a write")?;
        let s = sys::dsm_stat(g).or_fail(app, "dsm_stat")?;
        let managed = if s.managed_owner == u64::MAX {
            -1
        } else {
            s.managed_owner as i64
        };
        println!(
            "dsm-bench: node {}: migrate step {step}: entry={:#018x} responsible={} owner-here={} managed-owner={managed} version={}",
            app.node, s.entry_sum, s.responsible, s.owner, s.version
        );
        sys::barrier().or_fail(app, "barrier after the report")?;
    }
    let v = m.get(0);
    sys::barrier().or_fail(app, "barrier after reading")?;
    println!("dsm-bench: node {}: migrate: value={v}", app.node);
    m.unmap().or_fail(app, "dsm_unmap")?;
    app.ensure(v == 102, format_args!("the page reads {v}, not 102"))
}

fn bench(app: &App, n: u64) -> Outcome<()> {
    let nodes = live_nodes(app)?;
    app.ensure(nodes & 3 == 3, format_args!("bench needs nodes 0 and 1"))?;
    let third = nodes & 4 != 0;
    // Pages 0..n: node 1 writes, node 0 reads (read faults), then writes
    // (write faults invalidating one reader, node 1). Pages n..2n: node 2
    // reads them too, so node 0's writes invalidate two readers.
    let g = demo_common::share_dsm_range(app, nodes, PORT, MAGIC, 2 * n * PAGE)?;
    let m = DsmMapping::map(g, 2 * n * PAGE, true).or_fail(app, "dsm_map")?;
    let pages = |from: u64| from as usize..(from + n) as usize;
    sys::barrier().or_fail(app, "barrier before the first touch")?;
    if app.node == 1 {
        for p in pages(0).chain(pages(n)) {
            m.set(p * PAGE_WORDS, p as u64 + 1);
        }
    }
    sys::barrier().or_fail(app, "barrier before the read faults")?;
    let mut read_ns = 0;
    if app.node == 0 {
        let t0 = now(app)?;
        let mut sum = 0;
        for p in pages(0) {
            sum += m.get(p * PAGE_WORDS);
        }
        read_ns = (now(app)? - t0) / n;
        app.ensure(
            sum == n * (n + 1) / 2,
            format_args!("read {sum}, not {}", n * (n + 1) / 2),
        )?;
        // Node 0 reads the second half too (untimed): a reader there as well.
        for p in pages(n) {
            m.get(p * PAGE_WORDS);
        }
    }
    if app.node == 2 {
        for p in pages(n) {
            m.get(p * PAGE_WORDS);
        }
    }
    sys::barrier().or_fail(app, "barrier before the write faults")?;
    if app.node == 0 {
        let t1 = now(app)?;
        for p in pages(0) {
            m.set(p * PAGE_WORDS + 1, 1);
        }
        let t2 = now(app)?;
        for p in pages(n) {
            m.set(p * PAGE_WORDS + 1, 1);
        }
        let t3 = now(app)?;
        println!("bench dsm-read-fault n={n} value={read_ns} unit=ns");
        println!(
            "bench dsm-write-fault-1 n={n} value={} unit=ns",
            (t2 - t1) / n
        );
        if third {
            println!(
                "bench dsm-write-fault-2 n={n} value={} unit=ns",
                (t3 - t2) / n
            );
        }
    }
    sys::barrier().or_fail(app, "barrier after the faults")?;
    // Every page reads what its writers left: the first word from node 1,
    // the second from node 0's write fault.
    for p in pages(0).chain(pages(n)) {
        let (first, second) = (m.get(p * PAGE_WORDS), m.get(p * PAGE_WORDS + 1));
        app.ensure(
            first == p as u64 + 1 && second == 1,
            format_args!("page {p} reads ({first}, {second}), not ({}, 1)", p + 1),
        )?;
    }
    sys::barrier().or_fail(app, "barrier after the check")?;
    m.unmap().or_fail(app, "dsm_unmap")
}

/// Pages of the range whose `dsm_sync` the `disk` mode times (1 MiB).
const SYNC_PAGES: u64 = (1 << 20) / PAGE;
/// RAM budget pages the `disk` mode needs beyond [`SYNC_PAGES`]: the
/// directory pages stay in RAM and count against the budget, and a synced
/// page paged out before its sync would leave less than 1 MiB to write.
const SYNC_SLACK: u64 = 64;

/// This node's DSM counters.
fn info(app: &App) -> Outcome<shmos_rt::abi::DsmInfo> {
    sys::dsm_info().or_fail(app, "dsm_info")
}

/// Bytes per second of `pages` pages moved in `ns` nanoseconds.
fn bytes_per_s(pages: u64, ns: u64) -> u64 {
    (u128::from(pages * PAGE) * 1_000_000_000 / u128::from(ns.max(1))) as u64
}

fn disk(app: &App, n: u64) -> Outcome<()> {
    let nodes = live_nodes(app)?;
    let i = info(app)?;
    app.ensure(
        i.has_disk == 1,
        format_args!("disk needs a disk on every node"),
    )?;
    app.ensure(
        i.ram_pages >= SYNC_PAGES + SYNC_SLACK,
        format_args!(
            "a RAM budget of {} pages is below the {} that the 1 MiB sync needs (dsm.ram)",
            i.ram_pages,
            SYNC_PAGES + SYNC_SLACK
        ),
    )?;
    // At least twice the budget, so half the pages or more go out (not
    // more: under this host's KVM, ring 0 emulated, a page-out costs about
    // 270 ms); at the full count as much as the raw disk benchmark writes
    // (a fiftieth of N, 1 to 64 MiB).
    let paged = (2 * i.ram_pages).max((n / 50).clamp(1, 64) * SYNC_PAGES);
    app.ensure(
        paged <= i.disk_free,
        format_args!(
            "{paged} pages to page out (twice the budget of {} pages, dsm.ram) do not fit the disk's {} free pages",
            i.ram_pages, i.disk_free
        ),
    )?;
    sync_cost(app, nodes, (n / 50).max(1))?;
    paging(app, nodes, paged)
}

/// Times `dsm_sync` of a freshly rewritten 1 MiB range, `k` times, on node 0.
fn sync_cost(app: &App, nodes: u64, k: u64) -> Outcome<()> {
    let len = SYNC_PAGES * PAGE;
    let g = demo_common::share_dsm_range(app, nodes, PORT, MAGIC, len)?;
    sys::barrier().or_fail(app, "barrier before the syncs")?;
    if app.node == 0 {
        let m = DsmMapping::map(g, len, true).or_fail(app, "dsm_map")?;
        let mut total = 0;
        for round in 0..k {
            let before = info(app)?;
            // Every page dirty: the sync writes back, replicates and flushes
            // the whole MiB.
            for p in 0..SYNC_PAGES as usize {
                m.set(p * PAGE_WORDS, round);
            }
            let t0 = now(app)?;
            sys::dsm_sync(g, len).or_fail(app, "dsm_sync of 1 MiB")?;
            total += now(app)? - t0;
            let after = info(app)?;
            // Directory pages are written back too: the page-outs tell
            // whether all of the MiB was still in RAM to sync.
            let (wrote, outs) = (
                after.write_backs - before.write_backs,
                after.page_outs - before.page_outs,
            );
            app.ensure(
                wrote >= SYNC_PAGES && outs == 0,
                format_args!(
                    "sync {round} wrote back {wrote} pages with {outs} paged out (of {SYNC_PAGES}; raise dsm.ram)"
                ),
            )?;
        }
        println!("bench dsm-sync-1mib n={k} value={} unit=ns", total / k);
        m.unmap().or_fail(app, "dsm_unmap")?;
        // Its pages leave the RAM without counting as the paging phase's.
        sys::dsm_free(g, len).or_fail(app, "dsm_free")?;
    }
    sys::barrier().or_fail(app, "barrier after the syncs")
}

/// Node 0 writes `pages` pages under the RAM budget (page-outs), then
/// reads them back (page-ins), and prints both rates.
fn paging(app: &App, nodes: u64, pages: u64) -> Outcome<()> {
    let len = pages * PAGE;
    let g = demo_common::share_dsm_range(app, nodes, PORT, MAGIC, len)?;
    sys::barrier().or_fail(app, "barrier before paging")?;
    if app.node == 0 {
        let m = DsmMapping::map(g, len, true).or_fail(app, "dsm_map")?;
        let range = || 0..pages as usize;
        let before = info(app)?;
        let t0 = now(app)?;
        for p in range() {
            m.set(p * PAGE_WORDS, mark(p as u64));
        }
        let t1 = now(app)?;
        let written = info(app)?;
        // The pages still in RAM go clean: the reads then make room without
        // writing back, and time only what comes in.
        sys::dsm_sync(g, len).or_fail(app, "dsm_sync of the paged range")?;
        let synced = info(app)?;
        let t2 = now(app)?;
        for p in range() {
            let v = m.get(p * PAGE_WORDS);
            app.ensure(
                v == mark(p as u64),
                format_args!("page {p} reads {v:#x}, not {:#x}", mark(p as u64)),
            )?;
        }
        let t3 = now(app)?;
        let read = info(app)?;
        let outs = written.page_outs - before.page_outs;
        let ins = read.page_ins - synced.page_ins;
        app.ensure(
            outs > 0 && ins > 0,
            format_args!(
                "{pages} pages against a budget of {}: {outs} page-outs, {ins} page-ins",
                before.ram_pages
            ),
        )?;
        println!(
            "bench dsm-page-out n={outs} value={} unit=B/s",
            bytes_per_s(outs, t1 - t0)
        );
        println!(
            "bench dsm-page-in n={ins} value={} unit=B/s",
            bytes_per_s(ins, t3 - t2)
        );
        m.unmap().or_fail(app, "dsm_unmap")?;
        sys::dsm_free(g, len).or_fail(app, "dsm_free")?;
    }
    sys::barrier().or_fail(app, "barrier after paging")
}
