//! C = A x B in the DSM: the nodes compute row blocks of C in shared
//! global memory, with plain loads and stores.
//!
//! Node 0 allocates A, B and C (n x n u64 matrices, row-major, one after
//! the other) in the DSM global space, fills A and B deterministically
//! (entry (i, j) of A is `splitmix64(i * n + j) % 1000`, of B the same
//! offset by n^2) and sends the global address to the other nodes (port
//! 2). After a barrier, the k-th of K nodes computes rows `k*n/K ..
//! (k+1)*n/K` of C (wrapping u64 arithmetic), reading A and B through read
//! copies and writing its rows of C. After a second barrier every node
//! checks all of C against a product computed locally from the same
//! formulas and prints `dsm-matmul: node N: n=.. checksum=.. (C correct)`;
//! it exits 0 only if every entry matches.
//!
//! Arguments: `[n]`, by default 48.
#![no_std]
#![no_main]

use demo_common::{App, Check, DsmMapping, Outcome, PAGE, live_nodes, nodes_of, now, splitmix64};
use shmos_rt::{println, sys};

shmos_rt::entry!(main);

/// Port of the setup message from node 0.
const PORT: u32 = 2;
/// First word of the setup message.
const MAGIC: u64 = u64::from_le_bytes(*b"DSMMATMU");

fn a_of(n: u64, i: u64, j: u64) -> u64 {
    splitmix64(i * n + j) % 1000
}

fn b_of(n: u64, i: u64, j: u64) -> u64 {
    splitmix64(n * n + i * n + j) % 1000
}

fn main() -> i32 {
    demo_common::run("dsm-matmul", dsm_matmul)
}

fn dsm_matmul(app: &App) -> Outcome<()> {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let n = demo_common::number(app, words.next(), "matrix size", 48)?;
    app.ensure(
        (1..=512).contains(&n),
        format_args!("n = {n} is not in 1..=512"),
    )?;
    let start_set = live_nodes(app)?;
    let bytes = (3 * n * n * 8).next_multiple_of(PAGE);
    let g = demo_common::share_dsm_range(app, start_set, PORT, MAGIC, bytes)?;
    let m = DsmMapping::map(g, bytes, true).or_fail(app, "dsm_map")?;
    let (a, b, c) = (0, n * n, 2 * n * n);
    let at = |base: u64, i: u64, j: u64| (base + i * n + j) as usize;
    if app.node == 0 {
        for i in 0..n {
            for j in 0..n {
                m.set(at(a, i, j), a_of(n, i, j));
                m.set(at(b, i, j), b_of(n, i, j));
            }
        }
    }
    sys::barrier().or_fail(app, "barrier after filling A and B")?;

    let nodes = start_set.count_ones() as u64;
    let rank = nodes_of(start_set).position(|x| x == app.node).unwrap_or(0) as u64;
    let (first, end) = (rank * n / nodes, (rank + 1) * n / nodes);
    let started = now(app)?;
    for i in first..end {
        for j in 0..n {
            let mut s = 0u64;
            for k in 0..n {
                s = s.wrapping_add(m.get(at(a, i, k)).wrapping_mul(m.get(at(b, k, j))));
            }
            m.set(at(c, i, j), s);
        }
    }
    let ms = (now(app)? - started) / 1_000_000;
    println!(
        "dsm-matmul: node {}: computed rows {first}..{end} of {n} in {ms} ms",
        app.node
    );
    sys::barrier().or_fail(app, "barrier after the product")?;

    let mut wrong = None;
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..n {
        for j in 0..n {
            let mut s = 0u64;
            for k in 0..n {
                s = s.wrapping_add(a_of(n, i, k).wrapping_mul(b_of(n, k, j)));
            }
            let got = m.get(at(c, i, j));
            sum = (sum ^ got).wrapping_mul(0x0000_0100_0000_01b3);
            if got != s && wrong.is_none() {
                wrong = Some((i, j, got, s));
            }
        }
    }
    let verdict = if wrong.is_none() {
        "C correct"
    } else {
        "C WRONG"
    };
    println!(
        "dsm-matmul: node {}: n={n} checksum={sum:#018x} ({verdict})",
        app.node
    );
    sys::barrier().or_fail(app, "barrier after the check")?;
    m.unmap().or_fail(app, "dsm_unmap")?;
    if let Some((i, j, got, s)) = wrong {
        return Err(app.fail(format_args!("C[{i}][{j}] is {got}, the product is {s}")));
    }
    Ok(())
}
