//! `shmos bench-peer MODE ARGS...` (hidden): the child side of the
//! two-process benchmarks, started by [`super::baseline`] and
//! [`super::hosted`], never by hand.
//!
//! - `unix-echo SOCKET`: connects and echoes 64-byte messages until end of file.
//! - `mutex-contend FILE ITERATIONS`: contends for the process-shared mutex
//!   in FILE against the parent.
//! - `hosted FILE ITERATIONS LOCK COUNTER TRANSFER`: node 1 of the hosted
//!   shm-ext benchmark.
//!
//! The child dies with its parent (parent-death signal, set when it was
//! spawned) and every wait gives up after
//! [`WAIT`](super::baseline::WAIT), so none is ever left running.

use super::baseline::{
    MutexPage, SOCKET_MESSAGE_LEN, WAIT, contend, page, run_deadline, spin_until, warmup,
};
use super::hosted::{
    CHILD, Node, PARENT, PORT_ECHO, PORT_LOCK, PORT_STREAM, PORT_TRANSFER, STREAM_LEN, Setup,
    facts, number, read_number,
};
use anyhow::{Context, Result, bail, ensure};
use shm_ext::host::SharedFile;
use shm_ext::{Caller, Pools, Shm};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;

/// Runs the child side named by `args[0]`; returns the exit status.
pub fn main(args: Vec<String>) -> Result<u8> {
    let Some((mode, rest)) = args.split_first() else {
        bail!("bench-peer: which mode? (unix-echo, mutex-contend, hosted)");
    };
    match (mode.as_str(), rest) {
        ("unix-echo", [socket]) => unix_echo(Path::new(socket)),
        ("mutex-contend", [file, iterations]) => {
            mutex_contend(Path::new(file), iterations.parse().context("iterations")?)
        }
        ("hosted", [file, setup @ ..]) => hosted(Path::new(file), Setup::from_args(setup)?),
        _ => bail!("bench-peer: bad arguments {args:?}"),
    }
    .with_context(|| format!("bench-peer {mode}"))?;
    Ok(0)
}

/// Fails once the parent is gone (we were re-parented): a backstop for the
/// parent-death signal.
fn parent_check() -> impl FnMut() -> Result<()> {
    let parent = std::os::unix::process::parent_id();
    move || {
        ensure!(
            std::os::unix::process::parent_id() == parent,
            "the parent exited"
        );
        Ok(())
    }
}

/// Echoes 64-byte messages on the socket until the parent closes it.
fn unix_echo(socket: &Path) -> Result<()> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    let mut buf = [0u8; SOCKET_MESSAGE_LEN];
    loop {
        match stream.read_exact(&mut buf) {
            Ok(()) => stream.write_all(&buf).context("echoing")?,
            // The parent is done (or gone).
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e).context("reading a message"),
        }
    }
}

/// Warms up, says ready, waits for go, then takes the mutex `iterations`
/// times against the parent and says done.
fn mutex_contend(file: &Path, iterations: usize) -> Result<()> {
    let mut alive = parent_check();
    let page_map = MutexPage::file(file, false)?;
    let warm = warmup(iterations);
    let deadline = run_deadline(warm + iterations)?;
    for _ in 0..warm {
        page_map.lock_until(&deadline)?;
        page_map.unlock()?;
    }
    page_map.word(page::READY).store(1, Ordering::Release);
    spin_until("the parent's go", &mut alive, || {
        Ok((page_map.word(page::GO).load(Ordering::Acquire) == 1).then_some(()))
    })?;
    contend(
        &page_map,
        page_map.word(page::COUNTER),
        iterations,
        &deadline,
    )?;
    page_map.word(page::DONE).store(1, Ordering::Release);
    Ok(())
}

/// Node 1 of the hosted benchmark: the same phases as
/// [`super::hosted::run`], from the other side.
fn hosted(file: &Path, setup: Setup) -> Result<()> {
    let alive: &mut dyn FnMut() -> Result<()> = &mut parent_check();
    let map = SharedFile::open(file).with_context(|| format!("opening {}", file.display()))?;
    let shm = Shm::open(map.region()).context("validating the shared file")?;
    let generation = shm.join(CHILD, &facts()).context("joining as node 1")?;
    let node = Node {
        shm,
        me: Caller::new(CHILD, generation, 0)?,
    };
    let pools = Pools::attach(&shm, CHILD, generation).context("attaching the pools")?;
    let table = shm.lock_table()?;
    let counter = shm.region().atomic_u64(setup.counter)?;
    let n = setup.iterations;
    let warm = warmup(n);
    let mut buf = vec![0u8; STREAM_LEN];

    // 1. Echo every round-trip message, both sizes.
    for _ in 0..2 * (warm + n) {
        let len = node.recv(PARENT, PORT_ECHO, &mut buf, alive)?;
        node.send(PARENT, PORT_ECHO, &buf[..len], alive)?;
    }

    // 2. Take both stream batches, checking size and order; acknowledge each.
    for batch in [warm, n] {
        for i in 0..batch {
            let len = node.recv(PARENT, PORT_STREAM, &mut buf, alive)?;
            ensure!(
                len == STREAM_LEN && read_number(&buf) == Some(i),
                "stream message {i}: {len} bytes, number {:?}",
                read_number(&buf)
            );
        }
        node.send(PARENT, PORT_STREAM, &number(batch), alive)?;
    }

    // 3. (The parent measures alone.) 4. Lock handoff rounds.
    for round in [warm, n] {
        let len = node.recv(PARENT, PORT_LOCK, &mut buf, alive)?;
        ensure!(
            read_number(&buf[..len]) == Some(round),
            "go for {:?} acquisitions, expected {round}",
            read_number(&buf[..len])
        );
        node.contend(&table, setup.lock, counter, round, alive)?;
        node.send(PARENT, PORT_LOCK, &number(round), alive)?;
    }

    // 5. Hand every transferred region straight back.
    for i in 0..warm + n {
        let len = node.recv(PARENT, PORT_TRANSFER, &mut buf, alive)?;
        ensure!(
            read_number(&buf[..len]) == Some(i),
            "transfer message {:?}, expected {i}",
            read_number(&buf[..len])
        );
        pools
            .shm_transfer(setup.transfer, CHILD, 1 << CHILD, 1 << PARENT)
            .with_context(|| format!("transfer {i} back to node 0"))?;
        node.send(PARENT, PORT_TRANSFER, &number(i), alive)?;
    }

    shm.leave(CHILD, generation).context("leaving")?;
    Ok(())
}
