//! False sharing on the DSM: every node increments its own words of the
//! same two pages, with plain loads and stores, `N` times each.
//!
//! Node 0 allocates two pages of the DSM global space and sends their
//! global address to the other nodes (port 1). Each node maps them and,
//! `N` times, increments its word in each page (word `node` of page 0,
//! word `64 + node` of page 1): the nodes never touch the same word, but
//! every increment needs the page read-write here, so the pages move from
//! node to node through the coherence protocol. A lost update (a stale
//! copy, a store that went to a page another node already took) shows as
//! a word short of `N`. After a barrier every node reads every node's
//! words and prints `dsm-counter: node N: expected T, actual A` (T is
//! nodes x N x 2, A the sum of the words); it exits 0 only if every word
//! is exactly `N`.
//!
//! Arguments: `[N]`, by default 200.
#![no_std]
#![no_main]

use demo_common::{App, Check, DsmMapping, Outcome, PAGE, live_nodes, nodes_of, now};
use shmos_rt::{println, sys};

shmos_rt::entry!(main);

/// Port of the setup message from node 0.
const PORT: u32 = 1;
/// First word of the setup message.
const MAGIC: u64 = u64::from_le_bytes(*b"DSMCOUNT");
/// Pages shared.
const PAGES: u64 = 2;
/// Words in a page.
const PAGE_WORDS: usize = (PAGE / 8) as usize;

fn main() -> i32 {
    demo_common::run("dsm-counter", dsm_counter)
}

fn dsm_counter(app: &App) -> Outcome<()> {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let n = demo_common::number(app, words.next(), "increments per node", 200)?;
    let me = usize::from(app.node);
    let start_set = live_nodes(app)?;
    let g = demo_common::share_dsm_range(app, start_set, PORT, MAGIC, PAGES * PAGE)?;
    let map = DsmMapping::map(g, PAGES * PAGE, true).or_fail(app, "dsm_map")?;
    sys::barrier().or_fail(app, "barrier before the increments")?;

    let started = now(app)?;
    for _ in 0..n {
        for p in 0..PAGES as usize {
            let w = p * PAGE_WORDS + p * 64 + me;
            map.set(w, map.get(w) + 1);
        }
    }
    let ms = (now(app)? - started) / 1_000_000;
    println!(
        "dsm-counter: node {me} made {n} increments of its word in each of {PAGES} shared pages in {ms} ms"
    );
    sys::barrier().or_fail(app, "barrier after the increments")?;

    let (mut actual, mut short) = (0u64, None);
    for node in nodes_of(start_set).map(usize::from) {
        for p in 0..PAGES as usize {
            let v = map.get(p * PAGE_WORDS + p * 64 + node);
            actual += v;
            if v != n && short.is_none() {
                short = Some((node, p, v));
            }
        }
    }
    let expected = u64::from(start_set.count_ones()) * n * PAGES;
    println!("dsm-counter: node {me}: expected {expected}, actual {actual}");
    // Everyone has read before anyone leaves (a node's pages leave with it).
    sys::barrier().or_fail(app, "barrier after the check")?;
    map.unmap().or_fail(app, "dsm_unmap")?;
    if let Some((node, p, v)) = short {
        return Err(app.fail(format_args!(
            "node {node}'s word in page {p} is {v}, not {n}: updates were lost"
        )));
    }
    app.ensure(
        expected == actual,
        format_args!("the words sum to {actual}, not {expected}"),
    )
}
