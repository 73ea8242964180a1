//! Regions passed from node to node by ownership transfer.
//!
//! Node 0 allocates each region (one page) in its pool, makes itself the
//! owner, fills it with a pattern of the region's sequence number and a
//! checksum, moves the ownership to node 1 (`shm_transfer(h, {0}, {1})`)
//! and sends the handle to node 1 (port 3). Node k maps it writable (which
//! only an owner may), checks the pattern and the checksum that node k-1
//! left, writes its own pattern and checksum, and passes it on the same way;
//! the last node checks it, frees it and acknowledges it to node 0 (port 4).
//! After each transfer the sender checks that it can no longer map the
//! region writable (`PermissionDenied`); for the first region also that it
//! can still map it read-only. Node 0 keeps at most W regions in flight (the
//! acknowledgements are the credits), so memory stays bounded; a full queue
//! (`WouldBlock`) is retried after a yield.
//!
//! The nodes are the live ones, 0..K-1. The last prints
//! `pipeline: R regions passed through K nodes, all checksums correct`,
//! node 0 `pipeline: node 0 sent R regions, all came back freed`.
//!
//! Arguments: `[R [W]]`, by default `1000 16`.
#![no_std]
#![no_main]

use demo_common::{
    App, Check, Mapping, Outcome, PAGE, PATIENCE_NS, Received, checksum, count, live_nodes,
    splitmix64,
};
use shmos_rt::{Error, println, sys};

shmos_rt::entry!(main);

/// Port of region handles from the previous node.
const DATA: u32 = 3;
/// Port of acknowledgements from the last node to node 0.
const ACK: u32 = 4;
/// First word of a region message ("REGION").
const REGION: u64 = u64::from_le_bytes(*b"REGION\0\0");
/// First word of the end message ("END").
const END: u64 = u64::from_le_bytes(*b"END\0\0\0\0\0");
/// First word of an acknowledgement ("ACK").
const ACKED: u64 = u64::from_le_bytes(*b"ACK\0\0\0\0\0");
/// Name of node 0's pool.
const POOL: &str = "demo-pipeline";
/// Words in a region (one page).
const WORDS: usize = (PAGE / 8) as usize;

fn main() -> i32 {
    demo_common::run("pipeline", pipeline)
}

fn pipeline(app: &App) -> Outcome<()> {
    let mut buf = [0u8; shmos_rt::abi::MAX_ARGS];
    let mut words = shmos_rt::args(&mut buf).split_ascii_whitespace();
    let regions = demo_common::number(app, words.next(), "regions", 1000)?;
    let window = demo_common::number(app, words.next(), "regions in flight", 16)?;
    app.ensure(
        (1..=1024).contains(&window),
        format_args!("the window must be 1..=1024 regions, not {window}"),
    )?;
    let live = live_nodes(app)?;
    let k = count(live) as u16;
    app.ensure(
        live == (1u64 << k) - 1,
        format_args!("the live nodes must be 0..K-1, not {live:#x}"),
    )?;
    if app.node == 0 {
        produce(app, regions, window, k)
    } else {
        pass_on(app, k)
    }
}

/// Word `j` of the pattern node `stage` writes into region `seq`.
fn pattern(seq: u64, stage: u16, j: usize) -> u64 {
    splitmix64(seq << 24 ^ u64::from(stage) << 16 ^ j as u64)
}

/// Fills the region as node `stage`: sequence number, stage, pattern, checksum.
fn fill(map: &Mapping, seq: u64, stage: u16) {
    map.set(0, seq);
    map.set(1, u64::from(stage));
    for j in 2..WORDS - 1 {
        map.set(j, pattern(seq, stage, j));
    }
    map.set(WORDS - 1, checksum((0..WORDS - 1).map(|j| map.get(j))));
}

/// Checks that node `stage` filled the region as region `seq`.
fn verify(app: &App, map: &Mapping, seq: u64, stage: u16) -> Outcome<()> {
    let sum = checksum((0..WORDS - 1).map(|j| map.get(j)));
    app.ensure(
        map.get(WORDS - 1) == sum,
        format_args!(
            "region {seq}: checksum {:#x}, contents sum to {sum:#x}",
            map.get(WORDS - 1)
        ),
    )?;
    app.ensure(
        map.get(0) == seq && map.get(1) == u64::from(stage),
        format_args!(
            "region {seq}: holds region {} from node {}, expected node {stage}'s",
            map.get(0),
            map.get(1)
        ),
    )?;
    match (2..WORDS - 1).find(|&j| map.get(j) != pattern(seq, stage, j)) {
        Some(j) => Err(app.fail(format_args!(
            "region {seq}: word {j} is {:#x}, node {stage} wrote {:#x}",
            map.get(j),
            pattern(seq, stage, j)
        ))),
        None => Ok(()),
    }
}

/// Hands region `seq` (handle `h`, owned by this node) to node `next`: moves
/// the ownership, checks that this node lost write access, sends the handle.
fn hand_over(app: &App, seq: u64, h: u64, next: u16) -> Outcome<()> {
    let (me, to) = (1u64 << app.node, 1u64 << next);
    sys::shm_transfer(h, me, to).map_err(|e| {
        app.fail(format_args!(
            "shm_transfer of region {seq} to node {next}: {e}"
        ))
    })?;
    match Mapping::map(h, PAGE, true) {
        Err(Error::PermissionDenied) => {}
        Ok(m) => {
            let _ = m.unmap();
            return Err(app.fail(format_args!(
                "region {seq}: mapped writable after giving it to node {next}"
            )));
        }
        Err(e) => {
            return Err(app.fail(format_args!(
                "region {seq}: writable map by a former owner gave {e}, not PermissionDenied"
            )));
        }
    }
    if seq == 0 {
        // Reading stays open to every node.
        let m = Mapping::map(h, PAGE, false).map_err(|e| {
            app.fail(format_args!(
                "read-only map of region 0 by a non-owner: {e}"
            ))
        })?;
        verify(app, &m, seq, app.node)?;
        m.unmap().or_fail(app, "shm_unmap")?;
    }
    demo_common::send_words(app, next, DATA, &[REGION, seq, h])
}

fn produce(app: &App, regions: u64, window: u64, k: u16) -> Outcome<()> {
    let size = (window + 4) * PAGE;
    let pool = match sys::pool_create(POOL, size) {
        Ok(p) => p,
        Err(Error::AlreadyExists) => sys::pool_open(POOL).or_fail(app, "pool_open")?,
        Err(e) => return Err(app.fail(format_args!("pool_create {POOL}: {e}"))),
    };
    let (mut acked, mut denied) = (0u64, 0u64);
    for seq in 0..regions {
        while k > 1 && seq - acked >= window {
            take_ack(app, acked, k)?;
            acked += 1;
        }
        let h = sys::shm_alloc(pool, PAGE, PAGE)
            .map_err(|e| app.fail(format_args!("shm_alloc of region {seq}: {e}")))?;
        sys::shm_own(h, 1).map_err(|e| app.fail(format_args!("shm_own of region {seq}: {e}")))?;
        let map = Mapping::map(h, PAGE, true)
            .map_err(|e| app.fail(format_args!("shm_map of region {seq} (owner): {e}")))?;
        fill(&map, seq, 0);
        if k == 1 {
            verify(app, &map, seq, 0)?;
            map.unmap().or_fail(app, "shm_unmap")?;
            sys::shm_free(h)
                .map_err(|e| app.fail(format_args!("shm_free of region {seq}: {e}")))?;
            continue;
        }
        map.unmap().or_fail(app, "shm_unmap")?;
        hand_over(app, seq, h, 1)?;
        denied += 1;
    }
    if k > 1 {
        demo_common::send_words(app, 1, DATA, &[END, regions])?;
        while acked < regions {
            take_ack(app, acked, k)?;
            acked += 1;
        }
    }
    let stat = sys::pool_stat(pool).or_fail(app, "pool_stat")?;
    app.ensure(
        stat.regions == 0,
        format_args!("{} regions left in the pool", stat.regions),
    )?;
    sys::pool_destroy(pool).or_fail(app, "pool_destroy")?;
    if k == 1 {
        println!("pipeline: {regions} regions passed through 1 nodes, all checksums correct");
    }
    println!(
        "pipeline: node 0 sent {regions} regions, all came back freed ({denied} writable maps after a transfer refused)"
    );
    Ok(())
}

/// Takes the acknowledgement of region `seq` from the last node.
fn take_ack(app: &App, seq: u64, k: u16) -> Outcome<()> {
    let mut msg = [0u64; 2];
    let got = demo_common::recv_words(app, ACK, &mut msg, PATIENCE_NS)?;
    app.ensure(
        got == (Received {
            sender: k - 1,
            words: 2,
        }) && msg == [ACKED, seq],
        format_args!(
            "expected the acknowledgement of region {seq} from node {}, got {:?} from node {}",
            k - 1,
            &msg[..got.words],
            got.sender
        ),
    )
}

fn pass_on(app: &App, k: u16) -> Outcome<()> {
    let me = app.node;
    let last = me == k - 1;
    let (mut seq, mut denied) = (0u64, 0u64);
    loop {
        let mut msg = [0u64; 3];
        let got = demo_common::recv_words(app, DATA, &mut msg, PATIENCE_NS)?;
        app.ensure(
            got.sender == me - 1,
            format_args!("a message from node {}, not node {}", got.sender, me - 1),
        )?;
        if got.words == 2 && msg[0] == END {
            app.ensure(
                msg[1] == seq,
                format_args!("node 0 sent {} regions, {seq} came through", msg[1]),
            )?;
            if !last {
                demo_common::send_words(app, me + 1, DATA, &[END, seq])?;
            }
            break;
        }
        app.ensure(
            got.words == 3 && msg[0] == REGION && msg[1] == seq,
            format_args!("expected region {seq}, got {:?}", &msg[..got.words]),
        )?;
        let h = msg[2];
        // Writable: only the owner may, and the previous node made us one.
        let map = Mapping::map(h, PAGE, true)
            .map_err(|e| app.fail(format_args!("shm_map of region {seq} (now ours): {e}")))?;
        verify(app, &map, seq, me - 1)?;
        if last {
            map.unmap().or_fail(app, "shm_unmap")?;
            sys::shm_free(h)
                .map_err(|e| app.fail(format_args!("shm_free of region {seq}: {e}")))?;
            demo_common::send_words(app, 0, ACK, &[ACKED, seq])?;
        } else {
            fill(&map, seq, me);
            map.unmap().or_fail(app, "shm_unmap")?;
            hand_over(app, seq, h, me + 1)?;
            denied += 1;
        }
        seq += 1;
    }
    if last {
        println!("pipeline: {seq} regions passed through {k} nodes, all checksums correct");
    } else {
        println!(
            "pipeline: node {me} checked and passed on {seq} regions ({denied} writable maps after a transfer refused)"
        );
    }
    Ok(())
}
