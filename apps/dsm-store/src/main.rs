//! A large data set in the DSM, with checksums, made durable and checked
//! after restarts and node losses.
//!
//! `write MIB [SEED]`: node 0 allocates MIB MiB of the global space and
//! shares its address (printed as `dsm-store: range 0x… MIB MiB`). Every
//! live node writes its stripe of pages (page i goes to the node of rank
//! i mod nodes): word 0 is the page index, words 1..511 a pattern of
//! (seed, page, word), word 511 the FNV-1a checksum of words 0..511. Then
//! node 0 syncs the range (`dsm_sync`), every node reads its stripe back
//! and checks it, and prints its paging counters.
//!
//! `write MIB SEED lose V`: the same, then node V waits to be killed (the
//! test kills its VM) while the others wait until the cluster declared it
//! dead and check the whole range, striped over the survivors, V's pages
//! included: `dsm-store: node N verified K pages, B bad after node V was
//! lost`.
//!
//! `verify GADDR MIB [SEED]`: every live node maps the range at GADDR (hex)
//! and checks its stripe: after a restart on the same disks, or with a
//! node and its disk gone.
//!
//! Output per node: `dsm-store: node N verified K pages, B bad` and
//! `dsm-store: node N page-outs P page-ins I …`; exit 0 only if nothing
//! was bad.
#![no_std]
#![no_main]

use demo_common::{App, Check, DsmMapping, Outcome, PAGE, checksum, live_nodes, nodes_of, now};
use shmos_rt::{println, sys};

shmos_rt::entry!(main);

/// Port of the setup message from node 0.
const PORT: u32 = 1;
/// First word of the setup message.
const MAGIC: u64 = u64::from_le_bytes(*b"DSMSTORE");
/// Words in a page.
const WORDS: usize = (PAGE / 8) as usize;

fn main() -> i32 {
    demo_common::run("dsm-store", dsm_store)
}

/// Word `w` (1..WORDS-1) of page `page` for `seed`.
fn pattern(seed: u64, page: u64, w: usize) -> u64 {
    let x = seed ^ page.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (w as u64).rotate_left(32);
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (x >> 29)
}

/// The pages of `pages` that this node handles: its rank among the live
/// nodes, and their count.
fn stripe(app: &App, live: u64) -> (u64, u64) {
    let rank = nodes_of(live).position(|n| n == app.node).unwrap_or(0) as u64;
    (rank, u64::from(live.count_ones()))
}

fn dsm_store(app: &App) -> Outcome<()> {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let mode = words.next().unwrap_or("write");
    let live = live_nodes(app)?;
    let (g, mib) = match mode {
        "write" => {
            let mib = demo_common::number(app, words.next(), "MiB", 64)?;
            let g = demo_common::share_dsm_range(app, live, PORT, MAGIC, mib << 20)?;
            if app.node == 0 {
                println!("dsm-store: range {g:#x} {mib} MiB");
            }
            (g, mib)
        }
        "verify" => {
            let text = words.next().unwrap_or("");
            let g = u128::from_str_radix(text.trim_start_matches("0x"), 16)
                .map_err(|_| app.fail(format_args!("bad global address {text:?}")))?;
            let mib = demo_common::number(app, words.next(), "MiB", 64)?;
            (g, mib)
        }
        other => return Err(app.fail(format_args!("unknown mode {other:?} (write or verify)"))),
    };
    let seed = demo_common::number(app, words.next(), "seed", 1)?;
    let victim = match words.next() {
        None => None,
        Some("lose") => Some(demo_common::number(app, words.next(), "node to lose", 1)?),
        Some(other) => return Err(app.fail(format_args!("unexpected argument {other:?}"))),
    };
    let len = mib << 20;
    let pages = len / PAGE;
    let map = DsmMapping::map(g, len, mode == "write").or_fail(app, "dsm_map")?;
    let (rank, n) = stripe(app, live);
    let mine = (0..pages).filter(|p| p % n == rank);

    if mode == "write" {
        sys::barrier().or_fail(app, "barrier before writing")?;
        let started = now(app)?;
        let mut count = 0;
        for p in mine.clone() {
            let base = p as usize * WORDS;
            map.set(base, p);
            for w in 1..WORDS - 1 {
                map.set(base + w, pattern(seed, p, w));
            }
            let sum = checksum((0..WORDS - 1).map(|w| map.get(base + w)));
            map.set(base + WORDS - 1, sum);
            count += 1;
        }
        let ms = (now(app)? - started) / 1_000_000;
        println!(
            "dsm-store: node {} wrote {count} pages in {ms} ms",
            app.node
        );
        sys::barrier().or_fail(app, "barrier after writing")?;
        if app.node == 0 {
            let started = now(app)?;
            sys::dsm_sync(g, len).or_fail(app, "dsm_sync")?;
            let ms = (now(app)? - started) / 1_000_000;
            println!("dsm-store: synced {mib} MiB in {ms} ms");
        }
        sys::barrier().or_fail(app, "barrier after the sync")?;
    }

    let (mut checked, mut bad, mut first_bad) = check(&map, seed, mine);
    println!(
        "dsm-store: node {} verified {checked} pages, {bad} bad",
        app.node
    );
    if let Some(v) = victim {
        sys::barrier().or_fail(app, "barrier before the loss")?;
        let (more_checked, more_bad, more_first) = lose(app, &map, seed, pages, v)?;
        checked += more_checked;
        bad += more_bad;
        first_bad = first_bad.or(more_first);
    }
    let i = sys::dsm_info().or_fail(app, "dsm_info")?;
    println!(
        "dsm-store: node {} page-outs {} page-ins {} dropped {} write-backs {} stored {} migrations {} disk-pages {} cached {} budget {} disk-errors {}",
        app.node,
        i.page_outs,
        i.page_ins,
        i.dropped_copies,
        i.write_backs,
        i.stored,
        i.migrations,
        i.disk_pages,
        i.cached_pages,
        i.ram_pages,
        i.disk_errors
    );
    // Everyone has read before anyone leaves (a node's pages leave with it).
    sys::barrier().or_fail(app, "barrier after the check")?;
    map.unmap().or_fail(app, "dsm_unmap")?;
    app.ensure(
        bad == 0,
        format_args!("{bad} of {checked} pages bad, the first page {first_bad:?}"),
    )
}

/// Checks pages `pages` of `map`: (pages checked, bad ones, the first bad).
fn check(map: &DsmMapping, seed: u64, pages: impl Iterator<Item = u64>) -> (u64, u64, Option<u64>) {
    let (mut checked, mut bad, mut first_bad) = (0, 0, None);
    for p in pages {
        let base = p as usize * WORDS;
        let mut ok = map.get(base) == p;
        for w in 1..WORDS - 1 {
            ok &= map.get(base + w) == pattern(seed, p, w);
        }
        let sum = checksum((0..WORDS - 1).map(|w| map.get(base + w)));
        ok &= map.get(base + WORDS - 1) == sum;
        checked += 1;
        if !ok {
            bad += 1;
            first_bad.get_or_insert(p);
        }
    }
    (checked, bad, first_bad)
}

/// How long the survivors wait for the cluster to declare the lost node dead.
const LOSS_WAIT_NS: u64 = 300_000_000_000;

/// `lose V` after the write: node V waits to be killed (by the test); the
/// others wait until the cluster declared it dead, then check the whole
/// range, striped over the survivors, V's pages included.
fn lose(
    app: &App,
    map: &DsmMapping,
    seed: u64,
    pages: u64,
    victim: u64,
) -> Outcome<(u64, u64, Option<u64>)> {
    if u64::from(app.node) == victim {
        println!("dsm-store: node {victim} waits to be lost");
        loop {
            sys::sleep_ns(1_000_000_000).or_fail(app, "sleep")?;
        }
    }
    let deadline = now(app)? + LOSS_WAIT_NS;
    let live = loop {
        let live = live_nodes(app)?;
        if live & (1 << victim) == 0 {
            break live;
        }
        app.ensure(
            now(app)? < deadline,
            format_args!("node {victim} is still live"),
        )?;
        sys::sleep_ns(50_000_000).or_fail(app, "sleep")?;
    };
    let (rank, n) = stripe(app, live);
    let r = check(map, seed, (0..pages).filter(|p| p % n == rank));
    println!(
        "dsm-store: node {} verified {} pages, {} bad after node {victim} was lost",
        app.node, r.0, r.1
    );
    Ok(r)
}
