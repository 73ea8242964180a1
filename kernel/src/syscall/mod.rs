//! System call dispatch: the kernel side of `shmos_abi`.
//!
//! The entry stub (`arch::syscall`) calls [`dispatch`] with the caller's
//! registers. [`dispatch`] matches the number against `shmos_abi::Call`,
//! calls the handler with the six arguments, and puts the encoded result
//! (`value >= 0` or `-(error code)`) in `rax`. Every handler has the same
//! shape, `fn(&Args) -> Result<u64, Error>`, so adding one is one line in
//! [`handle`]. Handlers run on the caller's kernel stack with interrupts on,
//! in the caller's address space; they may block (`task::wait_event`).
//!
//! Rules every handler follows: arguments are untrusted (pointers go
//! through `crate::user`, which checks them against the caller's address
//! space; lengths are bounded by the limits in `shmos_abi`; ids are checked
//! against their tables), and every failure is a named `Error`, never a
//! panic. A buffer the kernel writes is checked over the bytes it may write.
//!
//! - [`basic`]: calls 0-8 (exit, write, yield, sleep, clock, node_id, nodes,
//!   barrier, args).
//! - [`shm`]: calls 10-35 (pools, regions, locks, signals, messages); they
//!   return `Unsupported` until wired to shm-ext.
//! - [`dsm`]: calls 40-44 (the distributed shared virtual memory).

pub mod basic;
pub mod dsm;
pub mod shm;

use crate::arch::syscall::{SyscallFrame, is_canonical, sanitize_user_rflags};
use crate::task;
use shmos_abi::{Call, Error};
use x86_64::instructions::interrupts;

/// The six arguments of a call, in ABI order (rdi, rsi, rdx, r10, r8, r9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args(pub [u64; 6]);

impl Args {
    /// Argument `i` (0..6).
    pub fn get(&self, i: usize) -> u64 {
        self.0[i]
    }

    /// Argument `i` as a length or count, refusing what does not fit a usize.
    pub fn count(&self, i: usize) -> Result<usize, Error> {
        usize::try_from(self.0[i]).map_err(|_| Error::TooLarge)
    }

    /// Argument `i` as a node id (0..64, the width of node bitmaps).
    pub fn node(&self, i: usize) -> Result<u16, Error> {
        match self.0[i] {
            n if n < 64 => Ok(n as u16),
            _ => Err(Error::InvalidArgument),
        }
    }
}

/// What a handler returns: the value for `rax`, or the error.
pub type SysResult = Result<u64, Error>;

/// Called by the entry stub with interrupts off; returns with them off.
pub(crate) extern "C" fn dispatch(frame: &mut SyscallFrame) {
    interrupts::enable();
    let args = Args([
        frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8, frame.r9,
    ]);
    let result = match Call::from_number(frame.rax) {
        // Exit never returns: nothing of this frame may be held across it.
        Some(Call::Exit) => task::exit_current(args.get(0) as u32 as i32),
        Some(call) => handle(call, &args),
        None => Err(Error::Unsupported),
    };
    frame.rax = shmos_abi::encode(result);
    // A time slice that ended during the call ends here.
    task::preempt_point();
    interrupts::disable();
    // sysret to a non-canonical RIP would fault in ring 0 (on Intel).
    if !is_canonical(frame.rip) {
        task::kill_current(&format_args!(
            "system call returns to non-canonical RIP {:#x}",
            frame.rip
        ));
    }
    frame.rflags = sanitize_user_rflags(frame.rflags);
}

/// The handler of each call.
pub fn handle(call: Call, a: &Args) -> SysResult {
    match call {
        Call::Exit => unreachable!("handled by dispatch"),
        Call::Write => basic::write(a),
        Call::Yield => basic::yield_now(a),
        Call::Sleep => basic::sleep(a),
        Call::Clock => basic::clock(a),
        Call::NodeId => basic::node_id(a),
        Call::Nodes => basic::nodes(a),
        Call::Barrier => basic::barrier(a),
        Call::Args => basic::args(a),
        Call::PoolCreate => shm::pool_create(a),
        Call::PoolOpen => shm::pool_open(a),
        Call::PoolDestroy => shm::pool_destroy(a),
        Call::PoolStat => shm::pool_stat(a),
        Call::ShmAlloc => shm::shm_alloc(a),
        Call::ShmFree => shm::shm_free(a),
        Call::ShmMap => shm::shm_map(a),
        Call::ShmUnmap => shm::shm_unmap(a),
        Call::ShmOwn => shm::shm_own(a),
        Call::ShmTransfer => shm::shm_transfer(a),
        Call::LockReserve => shm::lock_reserve(a),
        Call::LockUnreserve => shm::lock_unreserve(a),
        Call::LockAcquire => shm::lock_acquire(a),
        Call::LockRelease => shm::lock_release(a),
        Call::LockWait => shm::lock_wait(a),
        Call::LockMap => shm::lock_map(a),
        Call::LockWake => shm::lock_wake(a),
        Call::Signal => shm::signal(a),
        Call::SignalAll => shm::signal_all(a),
        Call::SignalWait => shm::signal_wait(a),
        Call::MsgSend => shm::msg_send(a),
        Call::MsgSendAll => shm::msg_send_all(a),
        Call::MsgRecv => shm::msg_recv(a),
        Call::DsmAlloc => dsm::dsm_alloc(a),
        Call::DsmMap => dsm::dsm_map(a),
        Call::DsmUnmap => dsm::dsm_unmap(a),
        Call::DsmFree => dsm::dsm_free(a),
        Call::DsmStat => dsm::dsm_stat(a),
        Call::DsmSync => dsm::dsm_sync(a),
        Call::DsmInfo => dsm::dsm_info(a),
    }
}

crate::kernel_test!(
    fn syscall_abi_numbers_round_trip() {
        for call in Call::ALL {
            assert_eq!(
                Call::from_number(call.number()),
                Some(call),
                "{}",
                call.name()
            );
        }
        assert_eq!(Call::from_number(9), None);
        assert_eq!(Call::from_number(u64::MAX), None);
        for e in shmos_abi::Error::ALL {
            assert_eq!(shmos_abi::decode(shmos_abi::encode(Err(e))), Err(e));
            assert_eq!(Error::from_code(e.code()), Some(e));
        }
        assert_eq!(shmos_abi::decode(shmos_abi::encode(Ok(42))), Ok(42));
        assert_eq!(shmos_abi::decode(-99i64 as u64), Err(Error::Unsupported));
    }
);

crate::kernel_test!(
    fn syscall_argument_helpers_refuse_out_of_range_values() {
        let a = Args([63, 64, u64::MAX, 7, 0, 0]);
        assert_eq!(a.node(0), Ok(63));
        assert_eq!(a.node(1), Err(Error::InvalidArgument));
        assert_eq!(a.count(3), Ok(7));
        assert_eq!(a.count(2), Ok(usize::MAX), "usize is 64-bit here");
        use shm_ext::ShmError;
        assert_eq!(shm::shm_error(ShmError::TimedOut), Error::TimedOut);
        assert_eq!(shm::shm_error(ShmError::QueueFull), Error::WouldBlock);
        assert_eq!(
            shm::shm_error(ShmError::Corrupt { what: "x" }),
            Error::Corrupt
        );
        assert_eq!(shm::shm_error(ShmError::NotOwner), Error::PermissionDenied);
    }
);

crate::kernel_test!(
    fn syscall_shared_memory_calls_refuse_hostile_arguments_by_name() {
        // The test VM has no cluster and the boot task no user memory: every
        // call must come back with a named error, whatever the arguments.
        let hostile = [
            [0; 6],
            [u64::MAX; 6],
            [0xffff_8000_0000_0000, 1 << 20, 7, 1, 1, 1],
            [1, 0x10, 0, u64::MAX, 0, 0],
        ];
        for args in hostile {
            for call in Call::ALL.into_iter().filter(|c| c.number() >= 10) {
                let r = handle(call, &Args(args));
                assert!(r.is_err(), "{} {args:x?} answered {r:?}", call.name());
            }
        }
    }
);
