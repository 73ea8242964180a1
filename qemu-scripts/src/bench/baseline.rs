//! Host baselines: what the same kinds of operation cost between two host
//! threads or processes without shmos, measured in the same invocation as
//! the VM figures so that a ratio of the two means something.
//!
//! Each function does one run: a short warm-up (caches, page faults, CPU
//! frequency), then `iterations` timed operations, and returns the mean per
//! operation. The caller repeats runs and takes medians.
//!
//! The cross-process baselines run their other side as a child process,
//! `shmos bench-peer ...` (see [`super::peer`]), spawned from `peer` (the
//! shmos executable).

use crate::cleanup::{Guarded, Workdir};
use anyhow::{Context, Result, bail, ensure};
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::hint::{black_box, spin_loop};
use std::io::{ErrorKind, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest any single wait for the other side may take before the run fails
/// (a peer that died or hangs must not hang the benchmark).
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// Bytes in each message of the UNIX socket round trip.
pub const SOCKET_MESSAGE_LEN: usize = 64;

/// Untimed operations before the timed ones: enough to fault pages in and
/// settle caches, small next to the timed part. Both sides of a two-process
/// run derive it from `iterations` alike.
pub(crate) fn warmup(iterations: usize) -> usize {
    (iterations / 10).clamp(10, 1000)
}

/// Mean nanoseconds per operation.
fn per_op_ns(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

/// Where a shared file for two processes goes: /dev/shm (tmpfs, like the
/// VMs' memory-backend-file) when there is one, else the temp dir.
pub(crate) fn shared_workdir() -> Result<Workdir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        Workdir::new_in(shm)
    } else {
        Workdir::new()
    }
}

/// Failed polls between two yields of the CPU: some microseconds of
/// spinning (a PAUSE is tens of cycles), longer than a round trip between
/// two running cores, so yields only happen when the other side is not
/// running. Then, on an oversubscribed machine, it gets our core sooner.
const SPINS_PER_YIELD: u32 = 256;

/// Busy-waits until `attempt` gives a value. Every [`SPINS_PER_YIELD`]
/// failed attempts it checks the deadline ([`WAIT`] from the first such
/// check) and `alive` (the other side is still there) and yields the CPU.
/// The fast path stays a pure poll: not even the clock is read when the
/// first attempt succeeds, since that would be part of what is measured.
pub(crate) fn spin_until<T>(
    what: &str,
    alive: &mut dyn FnMut() -> Result<()>,
    mut attempt: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let mut start = None;
    let mut spins = 0u32;
    loop {
        if let Some(v) = attempt()? {
            return Ok(v);
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(SPINS_PER_YIELD) {
            if start.get_or_insert_with(Instant::now).elapsed() > WAIT {
                bail!("timed out after {WAIT:?} waiting for {what}");
            }
            alive()?;
            std::thread::yield_now();
        } else {
            spin_loop();
        }
    }
}

/// The child side of a two-process measurement: a `shmos bench-peer`
/// process, killed (with its process group) and reaped whenever this is
/// dropped, and killed by the kernel if this thread dies first.
pub(crate) struct Peer {
    proc: Guarded,
    what: String,
}

impl Peer {
    /// Starts `exe bench-peer MODE ARGS...` with its output captured.
    pub(crate) fn spawn(exe: &Path, mode: &str, args: &[&OsStr]) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("bench-peer")
            .arg(mode)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("bench-peer {mode}");
        let proc = Guarded::spawn(&mut cmd)
            .with_context(|| format!("starting {} {what}", exe.display()))?;
        Ok(Self { proc, what })
    }

    /// Fails if the peer has exited already (it is never done before us).
    pub(crate) fn check(&mut self) -> Result<()> {
        match self.proc.try_wait().context("checking on the peer")? {
            None => Ok(()),
            Some(status) => bail!("{} exited early ({status})", self.what),
        }
    }

    /// Waits (at most [`WAIT`]) for the peer to exit on its own, successfully.
    pub(crate) fn finish(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.proc.try_wait().context("waiting for the peer")? {
                ensure!(status.success(), "{} failed ({status})", self.what);
                return Ok(());
            }
            if start.elapsed() > WAIT {
                bail!("{} did not exit within {WAIT:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills the peer and adds what it printed to `e`: its own error is
    /// usually the cause.
    pub(crate) fn explain(&mut self, e: anyhow::Error) -> anyhow::Error {
        let _ = self.proc.kill();
        let mut said = String::new();
        let child = self.proc.child();
        // The pipes reach end of file now that the whole group is dead.
        if let Some(out) = child.stdout.as_mut() {
            let _ = out.read_to_string(&mut said);
        }
        if let Some(err) = child.stderr.as_mut() {
            let _ = err.read_to_string(&mut said);
        }
        let said = said.trim();
        if said.is_empty() {
            e.context(format!("{} said nothing", self.what))
        } else {
            e.context(format!("{} said:\n{said}", self.what))
        }
    }

    /// Runs `measure` against the peer, then waits for the peer to finish;
    /// on any error the peer is killed and its output added.
    pub(crate) fn run<T>(mut self, measure: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        match measure(&mut self).and_then(|v| self.finish().map(|()| v)) {
            Ok(v) => Ok(v),
            Err(e) => Err(self.explain(e)),
        }
    }
}

/// One cache line to itself, so that the ping-pong word shares it with
/// nothing else.
#[repr(align(64))]
struct Line(AtomicU64);

/// Spins until `word` reads `value`, yielding now and then (see
/// [`SPINS_PER_YIELD`]) so that an oversubscribed machine cannot starve
/// the thread that will write it.
fn wait_for(word: &AtomicU64, value: u64) {
    let mut spins = 0u32;
    while word.load(Ordering::Acquire) != value {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(SPINS_PER_YIELD) {
            std::thread::yield_now();
        } else {
            spin_loop();
        }
    }
}

/// Polled round trip between two host threads through one cache line, in ns.
///
/// The physical floor for any polled round trip: one line moving between
/// two cores and back. The pinger writes an odd value, the ponger answers
/// with the next even one. NaN if `iterations` is 0.
pub fn thread_pingpong_ns(iterations: usize) -> f64 {
    if iterations == 0 {
        return f64::NAN;
    }
    let warm = warmup(iterations);
    let total = (warm + iterations) as u64;
    let line = Line(AtomicU64::new(0));
    let word = &line.0;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..total {
                wait_for(word, 2 * i + 1);
                word.store(2 * i + 2, Ordering::Release);
            }
        });
        let mut start = Instant::now();
        for i in 0..total {
            if i == warm as u64 {
                start = Instant::now();
            }
            word.store(2 * i + 1, Ordering::Release);
            wait_for(word, 2 * i + 2);
        }
        per_op_ns(start.elapsed(), iterations)
    })
}

/// The bytes of socket message `i`: distinct per message, so a stale or
/// misrouted echo cannot pass the check.
fn socket_message(i: usize) -> [u8; SOCKET_MESSAGE_LEN] {
    let mut m = [0x5a; SOCKET_MESSAGE_LEN];
    m[..8].copy_from_slice(&(i as u64).to_le_bytes());
    m
}

/// Round trip of a 64-byte message over a UNIX stream socket between this
/// process and a `bench-peer unix-echo` child (`peer` is the shmos
/// executable), in ns: the kernel-mediated IPC a VM-free design would use.
pub fn unix_socket_rtt_ns(peer: &Path, iterations: usize) -> Result<f64> {
    ensure!(iterations > 0, "iterations must be at least 1");
    let dir = Workdir::new()?;
    let path = dir.path().join("echo.sock");
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("binding a UNIX socket at {}", path.display()))?;
    // Non-blocking accept: a peer that never connects must not hang us.
    listener.set_nonblocking(true)?;
    let child = Peer::spawn(peer, "unix-echo", &[path.as_os_str()])?;
    child.run(|child| {
        let start = Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    child.check()?;
                    ensure!(start.elapsed() < WAIT, "the echo peer did not connect");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e).context("accepting the echo peer"),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        let warm = warmup(iterations);
        let mut back = [0u8; SOCKET_MESSAGE_LEN];
        let mut t0 = Instant::now();
        for i in 0..warm + iterations {
            if i == warm {
                t0 = Instant::now();
            }
            let m = socket_message(i);
            stream.write_all(&m).context("sending to the echo peer")?;
            stream
                .read_exact(&mut back)
                .context("reading the echo peer's reply")?;
            ensure!(back == m, "echo {i} differs from what was sent");
        }
        let elapsed = t0.elapsed();
        // End of file tells the peer to exit.
        drop(stream);
        Ok(per_op_ns(elapsed, iterations))
    })
}

/// Turns a pthread return code into an error.
fn pthread(code: libc::c_int, what: &str) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(code)).context(what.to_owned())
    }
}

/// Layout of the page two processes share for the mutex baselines: the
/// mutex, then one cache line per word so the words do not slow the mutex.
pub(crate) mod page {
    /// The pthread mutex.
    pub const MUTEX: usize = 0;
    /// The counter incremented under the mutex.
    pub const COUNTER: usize = 64;
    /// Set by the child once it is mapped and warmed up.
    pub const READY: usize = 128;
    /// Set by the parent to start the timed part.
    pub const GO: usize = 192;
    /// Set by the child when its timed part is done.
    pub const DONE: usize = 256;
    /// Bytes mapped.
    pub const LEN: usize = 4096;
}

// The mutex must fit before the counter's line.
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= page::COUNTER);

/// A shared mapping holding a process-shared pthread mutex at
/// [`page::MUTEX`] and atomic words at the other [`page`] offsets.
pub(crate) struct MutexPage {
    base: NonNull<u8>,
    /// Whether this mapping initialised the mutex (and so destroys it).
    owner: bool,
}

impl MutexPage {
    /// A fresh anonymous shared page with an initialised mutex.
    pub(crate) fn anonymous() -> Result<Self> {
        Self::map(-1, libc::MAP_SHARED | libc::MAP_ANONYMOUS, true)
    }

    /// Maps the file at `path`; `create` sizes it and initialises the mutex
    /// (the parent), else the mutex must have been initialised (the child).
    pub(crate) fn file(path: &Path, create: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        if create {
            file.set_len(page::LEN as u64)?;
        }
        // The mapping keeps the file's pages; the descriptor may close after.
        Self::map(file.as_raw_fd(), libc::MAP_SHARED, create)
    }

    fn map(fd: libc::c_int, flags: libc::c_int, init: bool) -> Result<Self> {
        // SAFETY: a new mapping at an address the kernel picks; nothing
        // existing is touched. The result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of the mutex page");
        }
        let base = NonNull::new(p.cast::<u8>()).context("mmap returned null")?;
        let mut page = Self { base, owner: false };
        if init {
            page.init_mutex()?;
            page.owner = true;
        }
        Ok(page)
    }

    fn mutex(&self) -> *mut libc::pthread_mutex_t {
        // In bounds (offset 0) and page-aligned, so aligned for the mutex.
        self.base.as_ptr().wrapping_add(page::MUTEX).cast()
    }

    /// Makes the mutex process-shared (it lives in memory another process maps).
    fn init_mutex(&self) -> Result<()> {
        let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is writable storage of the right type; init fills it.
        let made = unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) };
        pthread(made, "pthread_mutexattr_init")?;
        // SAFETY: `attr` was initialised just above and is destroyed below.
        let shared = unsafe {
            libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED)
        };
        // SAFETY: the mutex storage lies in our live mapping, is suitably
        // aligned, and no one uses it yet; `attr` is initialised.
        let init = unsafe { libc::pthread_mutex_init(self.mutex(), attr.as_ptr()) };
        // SAFETY: `attr` is initialised and not used after this.
        unsafe { libc::pthread_mutexattr_destroy(attr.as_mut_ptr()) };
        pthread(shared, "pthread_mutexattr_setpshared")?;
        pthread(init, "pthread_mutex_init")
    }

    /// Locks the mutex (blocking without limit: only for a mutex no one else uses).
    fn lock(&self) -> Result<()> {
        // SAFETY: the mutex was initialised (by us or the parent) and lives
        // in our mapping for as long as `self`.
        let code = unsafe { libc::pthread_mutex_lock(self.mutex()) };
        pthread(code, "pthread_mutex_lock")
    }

    /// Locks the mutex, giving up at `deadline` (CLOCK_REALTIME): a peer
    /// that died holding it fails the run instead of hanging it. The fast
    /// path is the same compare-and-swap as `pthread_mutex_lock`.
    pub(crate) fn lock_until(&self, deadline: &libc::timespec) -> Result<()> {
        // SAFETY: as in `lock`; `deadline` is a valid timespec.
        let code = unsafe { libc::pthread_mutex_timedlock(self.mutex(), deadline) };
        pthread(code, "pthread_mutex_timedlock")
    }

    /// Unlocks the mutex, which the caller holds.
    pub(crate) fn unlock(&self) -> Result<()> {
        // SAFETY: as in `lock`; unlocking a mutex we do not hold is an
        // error code for a default mutex, not undefined behaviour.
        let code = unsafe { libc::pthread_mutex_unlock(self.mutex()) };
        pthread(code, "pthread_mutex_unlock")
    }

    /// The atomic word at `offset` (one of the [`page`] word offsets).
    pub(crate) fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= page::LEN && offset >= page::COUNTER);
        // SAFETY: in bounds and 8-byte aligned (checked above, base is
        // page-aligned), outside the mutex, and the mapping lives as long as
        // the borrow of `self`; other processes touch it only atomically.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }
}

// SAFETY: the page is plain shared memory; the mutex is process-shared and
// thread-safe by definition, and the words are only touched atomically.
unsafe impl Send for MutexPage {}
// SAFETY: as for Send: every access through `&MutexPage` is a pthread mutex
// call or an atomic operation.
unsafe impl Sync for MutexPage {}

impl Drop for MutexPage {
    fn drop(&mut self) {
        if self.owner {
            // SAFETY: initialised by us; no thread of ours holds it now. The
            // result is ignored: a failed destroy leaks nothing the unmap
            // does not take.
            unsafe { libc::pthread_mutex_destroy(self.mutex()) };
        }
        // SAFETY: unmaps exactly the mapping `map` made; no reference into
        // it outlives `self` (the word borrows end with it).
        unsafe { libc::munmap(self.base.as_ptr().cast(), page::LEN) };
    }
}

/// The CLOCK_REALTIME time `after` from now, for `pthread_mutex_timedlock`.
pub(crate) fn realtime_deadline(after: Duration) -> Result<libc::timespec> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock before 1970")?
        + after;
    Ok(libc::timespec {
        tv_sec: libc::time_t::try_from(now.as_secs()).context("deadline out of range")?,
        tv_nsec: libc::c_long::from(now.subsec_nanos()),
    })
}

/// One timed-lock deadline for a whole run of `iterations` acquisitions:
/// generous, since only a dead peer should ever reach it.
pub(crate) fn run_deadline(iterations: usize) -> Result<libc::timespec> {
    let n = u32::try_from(iterations).unwrap_or(u32::MAX);
    realtime_deadline(WAIT.saturating_add(Duration::from_micros(100).saturating_mul(n)))
}

/// Uncontended `pthread_mutex_lock` + `pthread_mutex_unlock` of a
/// process-shared mutex in a shared mapping, in ns per pair.
pub fn pshared_mutex_ns(iterations: usize) -> Result<f64> {
    ensure!(iterations > 0, "iterations must be at least 1");
    let page = MutexPage::anonymous()?;
    let warm = warmup(iterations);
    let mut start = Instant::now();
    for i in 0..warm + iterations {
        if i == warm {
            start = Instant::now();
        }
        page.lock()?;
        page.unlock()?;
    }
    Ok(per_op_ns(start.elapsed(), iterations))
}

/// Lock handoff of a process-shared mutex between two processes, in ns per
/// acquisition: this one and a `bench-peer mutex-contend` child each do
/// `iterations` lock / increment a shared counter / unlock at once. Fails
/// unless the counter ends at exactly `2 * iterations`.
pub fn pshared_mutex_handoff_ns(peer: &Path, iterations: usize) -> Result<f64> {
    ensure!(iterations > 0, "iterations must be at least 1");
    let dir = shared_workdir()?;
    let path: PathBuf = dir.path().join("mutex");
    let page = MutexPage::file(&path, true)?;
    let n = iterations.to_string();
    let child = Peer::spawn(peer, "mutex-contend", &[path.as_os_str(), OsStr::new(&n)])?;
    child.run(|child| {
        let deadline = run_deadline(warmup(iterations) + iterations)?;
        // Our warm-up; the child does its own before it says it is ready.
        for _ in 0..warmup(iterations) {
            page.lock_until(&deadline)?;
            page.unlock()?;
        }
        spin_until("the mutex peer to be ready", &mut || child.check(), || {
            Ok((page.word(page::READY).load(Ordering::Acquire) == 1).then_some(()))
        })?;
        let counter = page.word(page::COUNTER);
        page.word(page::GO).store(1, Ordering::Release);
        let start = Instant::now();
        contend(&page, counter, iterations, &deadline)?;
        spin_until("the mutex peer to finish", &mut || child.check(), || {
            Ok((page.word(page::DONE).load(Ordering::Acquire) == 1).then_some(()))
        })?;
        let elapsed = start.elapsed();
        let total = counter.load(Ordering::Acquire);
        ensure!(
            total == 2 * iterations as u64,
            "lost updates under the mutex: counter {total}, expected {}",
            2 * iterations
        );
        Ok(per_op_ns(elapsed, 2 * iterations))
    })
}

/// `iterations` times: lock, increment `counter` by a plain load and store
/// (so that only the mutex keeps increments from being lost), unlock.
pub(crate) fn contend(
    page: &MutexPage,
    counter: &AtomicU64,
    iterations: usize,
    deadline: &libc::timespec,
) -> Result<()> {
    for _ in 0..iterations {
        page.lock_until(deadline)?;
        let v = counter.load(Ordering::Relaxed);
        counter.store(v + 1, Ordering::Relaxed);
        page.unlock()?;
    }
    Ok(())
}

/// Host memcpy bandwidth copying `bytes` between two buffers, in MB/s
/// (10^6 bytes per second). NaN if `bytes` or `iterations` is 0.
pub fn memcpy_mb_s(bytes: usize, iterations: usize) -> f64 {
    if bytes == 0 || iterations == 0 {
        return f64::NAN;
    }
    let src = vec![0xa5u8; bytes];
    let mut dst = vec![0u8; bytes];
    let warm = warmup(iterations);
    let mut start = Instant::now();
    for i in 0..warm + iterations {
        if i == warm {
            start = Instant::now();
        }
        // black_box on both ends: the copy must happen, every time.
        black_box(&mut dst[..]).copy_from_slice(black_box(&src[..]));
        black_box(&dst);
    }
    let secs = start.elapsed().as_secs_f64();
    (bytes * iterations) as f64 / secs / 1e6
}

/// One trivial host system call (`getppid`), in ns: what entering and
/// leaving a kernel costs here, beside the VM's null system call.
pub fn syscall_ns(iterations: usize) -> f64 {
    if iterations == 0 {
        return f64::NAN;
    }
    let warm = warmup(iterations);
    let mut start = Instant::now();
    for i in 0..warm + iterations {
        if i == warm {
            start = Instant::now();
        }
        black_box(nix::unistd::getppid());
    }
    per_op_ns(start.elapsed(), iterations)
}

/// Host file write bandwidth in bytes per second: a new file in `dir`
/// written sequentially in 4 KiB `write`s, `bytes` in all, then
/// `fdatasync`, timed together (what a guest's virtio-blk writes and flush
/// become for QEMU's `cache=writeback` on the image). The file is removed.
pub fn file_write_bytes_per_s(dir: &Path, bytes: u64) -> Result<f64> {
    const BLOCK: usize = 4096;
    ensure!(bytes >= BLOCK as u64, "write at least one 4 KiB block");
    let file = tempfile::Builder::new()
        .prefix("shmos-bench-write-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let mut block = [0x5au8; BLOCK];
    let mut out = file.as_file();
    let start = Instant::now();
    for n in 0..bytes / BLOCK as u64 {
        block[..8].copy_from_slice(&n.to_le_bytes());
        out.write_all(&block).context("writing the baseline file")?;
    }
    out.sync_data().context("fdatasync of the baseline file")?;
    let secs = start.elapsed().as_secs_f64();
    Ok((bytes / BLOCK as u64 * BLOCK as u64) as f64 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_write_is_positive_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b_s = file_write_bytes_per_s(dir.path(), 1 << 20).expect("file baseline");
        assert!(b_s.is_finite() && b_s > 0.0, "{b_s}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(file_write_bytes_per_s(dir.path(), 100).is_err());
    }

    #[test]
    fn thread_pingpong_is_positive() {
        let ns = thread_pingpong_ns(100);
        assert!(ns.is_finite() && ns > 0.0, "{ns}");
        assert!(thread_pingpong_ns(0).is_nan());
    }

    #[test]
    fn pshared_mutex_is_positive() {
        let ns = pshared_mutex_ns(100).expect("mutex baseline");
        assert!(ns.is_finite() && ns > 0.0, "{ns}");
    }

    #[test]
    fn memcpy_is_positive() {
        let mb_s = memcpy_mb_s(64 * 1024, 100);
        assert!(mb_s.is_finite() && mb_s > 0.0, "{mb_s}");
    }

    #[test]
    fn mutex_contend_counts_exactly() {
        let page = MutexPage::anonymous().expect("page");
        let deadline = run_deadline(1000).expect("deadline");
        let counter = page.word(page::COUNTER);
        std::thread::scope(|s| {
            s.spawn(|| contend(&page, counter, 1000, &deadline).expect("thread"));
            contend(&page, counter, 1000, &deadline).expect("main");
        });
        assert_eq!(counter.load(Ordering::Acquire), 2000);
    }

    #[test]
    fn spin_until_times_out_through_alive() {
        let err = spin_until::<()>("nothing", &mut || bail!("peer gone"), || Ok(None))
            .expect_err("must fail");
        assert!(err.to_string().contains("peer gone"));
    }
}
