//! Tasks and the scheduler.
//!
//! A task is a kernel stack, a saved stack pointer, and, for an app, an
//! address space; apps are single-threaded, so a task is a process and its
//! pid is the task's. States: ready (in the run queue), running, blocked
//! (waiting for events or a deadline, see [`wait`]), exited (a zombie until
//! another task frees its stack and address space).
//!
//! Scheduling is round-robin with a time slice of one timer tick (10 ms).
//! User mode is preemptive: a tick or a wake-up that arrives while an app
//! runs, or while it is inside a system call, switches tasks at the next
//! return to user mode ([`preempt_point`]). Kernel code is not preempted; it
//! gives the CPU up only by blocking, yielding or exiting. Each CPU has an
//! idle task that halts until an interrupt makes a task ready.
//!
//! The boot context becomes task 0, `kernel`: it starts the apps and waits
//! for them like any task waits (`wait_event`).
//!
//! Switching saves the callee-saved registers on the old task's kernel stack
//! and loads the new one's (`task_switch`), after loading the new task's
//! address space and pointing TSS.RSP0 and the per-CPU syscall stack at its
//! kernel stack. Everything about the switch happens with interrupts off.

pub mod stack;
pub mod wait;

pub use wait::{Events, TimedOut, deadline_after, notify, sleep_ns, wait_event};

use crate::arch::{cpu, gdt};
use crate::loader::{self, LoadError};
use crate::memory::paging::{self, MapError};
use crate::memory::space::{AddressSpace, STACK_SIZE as USER_STACK_SIZE, STACK_TOP};
use crate::sync::IrqMutex;
use crate::syscall::shm::ProcessShm;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};
use stack::KernelStack;
use x86_64::instructions::interrupts;
use x86_64::structures::paging::PageTableFlags as Flags;

/// A task (process) id.
pub type Pid = u32;

/// Most tasks alive at once (apps, idle and the boot task).
pub const MAX_TASKS: usize = 64;

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed (a CPU exception in user mode).
    Killed,
}

/// Why a task could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// The image was refused.
    Image(LoadError),
    /// No memory for its address space, stacks or tables.
    Memory(MapError),
    /// [`MAX_TASKS`] are alive.
    TooManyTasks,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Image(e) => write!(f, "{e}"),
            SpawnError::Memory(e) => write!(f, "out of memory ({e:?})"),
            SpawnError::TooManyTasks => write!(f, "too many tasks ({MAX_TASKS})"),
        }
    }
}

/// One task. Shared (`Arc`) between the scheduler and code running for it.
pub struct Task {
    /// Its id.
    pub pid: Pid,
    /// The app's name (or the kernel task's).
    pub name: String,
    /// The app's argument string.
    pub args: String,
    /// Where the app starts (0 for kernel tasks).
    user_entry: u64,
    /// Its kernel stack (none for the boot task, which runs on the boot stack).
    stack: IrqMutex<Option<KernelStack>>,
    /// Its address space (none for kernel tasks); taken when it is reaped.
    space: IrqMutex<Option<AddressSpace>>,
    /// Shared-memory state of the process (mappings, locks, ...).
    pub shm: IrqMutex<ProcessShm>,
}

impl Task {
    fn new(pid: Pid, name: &str, args: &str) -> Task {
        Task {
            pid,
            name: name.into(),
            args: args.into(),
            user_entry: 0,
            stack: IrqMutex::new(None),
            space: IrqMutex::new(None),
            shm: IrqMutex::new(ProcessShm::default()),
        }
    }

    /// Whether this task runs an app (has an address space).
    pub fn is_user(&self) -> bool {
        self.user_entry != 0
    }

    /// Runs `f` on the task's address space (none for kernel tasks).
    pub fn with_space<R>(&self, f: impl FnOnce(&mut AddressSpace) -> R) -> Option<R> {
        self.space.lock().as_mut().map(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Running,
    Blocked,
    Exited,
}

/// What a blocked task waits for.
#[derive(Debug, Clone, Copy, Default)]
struct Wait {
    events: Events,
    deadline: Option<u64>,
}

/// The scheduler's record of a task.
struct Entry {
    task: Arc<Task>,
    state: State,
    /// The saved kernel stack pointer while it does not run; boxed so that
    /// its address stays put while `task_switch` writes it.
    rsp: Box<u64>,
    wait: Wait,
}

struct Scheduler {
    tasks: BTreeMap<Pid, Entry>,
    ready: VecDeque<Pid>,
    /// Exited tasks whose stacks may still be in use until the next switch.
    zombies: Vec<Entry>,
    finished: BTreeMap<Pid, ExitStatus>,
    running: [Pid; cpu::MAX_CPUS],
    idle: [Option<Pid>; cpu::MAX_CPUS],
}

impl Scheduler {
    /// Makes every blocked task that `wakes` matches ready; true if any.
    fn wake(&mut self, wakes: impl Fn(&Wait) -> bool) -> bool {
        let mut woke = false;
        for (pid, e) in self.tasks.iter_mut() {
            if e.state == State::Blocked && wakes(&e.wait) {
                e.state = State::Ready;
                e.wait = Wait::default();
                self.ready.push_back(*pid);
                woke = true;
            }
        }
        woke
    }

    /// The next task to run on a CPU whose idle task is `idle`.
    fn pick(&mut self, idle: Pid) -> Pid {
        while let Some(pid) = self.ready.pop_front() {
            if self
                .tasks
                .get(&pid)
                .is_some_and(|e| e.state == State::Ready)
            {
                return pid;
            }
        }
        idle
    }
}

static SCHED: IrqMutex<Scheduler> = IrqMutex::new(Scheduler {
    tasks: BTreeMap::new(),
    ready: VecDeque::new(),
    zombies: Vec::new(),
    finished: BTreeMap::new(),
    running: [0; cpu::MAX_CPUS],
    idle: [None; cpu::MAX_CPUS],
});
static NEXT_PID: AtomicU32 = AtomicU32::new(1);

core::arch::global_asm!(
    r#"
    .section .text
    .global task_switch
task_switch:
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rdi)
    mov %rsi, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    ret

    .global task_trampoline
task_trampoline:
    mov %r12, %rdi
    call *%rbx
    ud2
"#,
    options(att_syntax)
);

unsafe extern "C" {
    /// Saves the callee-saved registers and RSP into `*save`, loads RSP from
    /// `load` and restores the registers saved there.
    fn task_switch(save: *mut u64, load: u64);
    /// Where a new task's first switch returns to: calls `rbx(r12)`.
    fn task_trampoline();
}

/// Writes a new task's first context at the top of its kernel stack:
/// `task_switch` will pop it and return into `task_trampoline`, which calls
/// `entry(arg)` with the stack aligned as the ABI wants.
fn initial_context(top: u64, entry: extern "C" fn(u64) -> !, arg: u64) -> u64 {
    let frame = [
        0,                                   // r15
        0,                                   // r14
        0,                                   // r13
        arg,                                 // r12
        entry as *const () as u64,           // rbx
        0,                                   // rbp
        task_trampoline as *const () as u64, // return address
    ];
    let rsp = top - 8 * frame.len() as u64;
    // SAFETY: the stack is fresh (or an ended task's, no longer used), mapped
    // and ours; the frame fits below its 16-byte aligned top.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), rsp as *mut u64, frame.len()) };
    rsp
}

/// Turns the boot context into task 0 and starts this CPU's idle task.
/// Runs once, after memory is up and before anything blocks.
pub fn init() {
    let idle_stack = KernelStack::new().expect("a stack for the idle task");
    let idle_rsp = initial_context(idle_stack.top(), idle_main, 0);
    let idle_pid = NEXT_PID.fetch_add(1, Ordering::Relaxed);
    let idle = Task::new(idle_pid, "idle", "");
    *idle.stack.lock() = Some(idle_stack);
    let boot = Entry {
        task: Arc::new(Task::new(0, "kernel", "")),
        state: State::Running,
        rsp: Box::new(0),
        wait: Wait::default(),
    };
    let idle = Entry {
        task: Arc::new(idle),
        state: State::Ready,
        rsp: Box::new(idle_rsp),
        wait: Wait::default(),
    };
    let me = cpu::current().index;
    let mut s = SCHED.lock();
    s.tasks.insert(0, boot);
    s.tasks.insert(idle_pid, idle);
    s.running[me] = 0;
    s.idle[me] = Some(idle_pid);
}

/// Starts the app `name` from the ELF image `elf` with argument string
/// `args`; it runs when the scheduler gets to it.
pub fn spawn_user(name: &str, args: &str, elf: &[u8]) -> Result<Pid, SpawnError> {
    if SCHED.lock().tasks.len() >= MAX_TASKS {
        return Err(SpawnError::TooManyTasks);
    }
    let mut space = AddressSpace::new().map_err(SpawnError::Memory)?;
    let entry = loader::load(elf, &mut space).map_err(SpawnError::Image)?;
    space
        .map_anonymous(
            STACK_TOP - USER_STACK_SIZE,
            USER_STACK_SIZE,
            Flags::WRITABLE | Flags::NO_EXECUTE,
        )
        .map_err(SpawnError::Memory)?;
    let stack = KernelStack::new().map_err(SpawnError::Memory)?;
    let rsp = initial_context(stack.top(), user_task_start, 0);
    let pid = NEXT_PID.fetch_add(1, Ordering::Relaxed);
    let mut task = Task::new(pid, name, args);
    task.user_entry = entry;
    *task.stack.lock() = Some(stack);
    *task.space.lock() = Some(space);
    let entry = Entry {
        task: Arc::new(task),
        state: State::Ready,
        rsp: Box::new(rsp),
        wait: Wait::default(),
    };
    let mut s = SCHED.lock();
    s.tasks.insert(pid, entry);
    s.ready.push_back(pid);
    Ok(pid)
}

/// The task running on this CPU.
pub fn current() -> Arc<Task> {
    let s = SCHED.lock();
    let me = s.running[cpu::current().index];
    s.tasks
        .get(&me)
        .expect("the running task is known")
        .task
        .clone()
}

/// Task `pid`, while it is known to the scheduler (not yet reaped).
pub fn find(pid: Pid) -> Option<Arc<Task>> {
    SCHED.lock().tasks.get(&pid).map(|e| e.task.clone())
}

/// How task `pid` ended, once it has.
pub fn exit_status(pid: Pid) -> Option<ExitStatus> {
    SCHED.lock().finished.get(&pid).copied()
}

/// Blocks until task `pid` has ended; returns how.
pub fn wait_exit(pid: Pid) -> ExitStatus {
    let mut status = None;
    let _ = wait_event(Events::TASK_EXIT, None, || {
        status = exit_status(pid);
        status.is_some()
    });
    status.expect("the wait ends only with a status")
}

/// Tasks alive (not yet reaped), idle and boot tasks included.
pub fn count() -> usize {
    SCHED.lock().tasks.len()
}

/// Gives the CPU to the next ready task, if any; returns when this task is
/// scheduled again.
pub fn yield_now() {
    schedule();
}

/// Yields if this CPU's time slice ended or a wake-up asked for it. Called
/// before returning to user mode (interrupts and system calls).
pub fn preempt_point() {
    if cpu::current().need_resched.load(Ordering::Relaxed) {
        schedule();
    }
}

/// Called from the timer interrupt.
pub fn on_tick() {
    wait::tick();
}

/// Ends the calling task with `code`; prints `app NAME (pid N) exited with
/// code C`. Its memory is freed after the switch away from it.
pub fn exit_current(code: i32) -> ! {
    end_current(
        ExitStatus::Code(code),
        format_args!("exited with code {code}"),
    )
}

/// Ends the calling task because of `why` (an exception report); prints
/// `app NAME (pid N) killed: WHY`.
pub fn kill_current(why: &dyn fmt::Display) -> ! {
    end_current(ExitStatus::Killed, format_args!("killed: {why}"))
}

fn end_current(status: ExitStatus, how: fmt::Arguments<'_>) -> ! {
    let me = current();
    me.shm.lock().release(me.pid);
    crate::dsm::process_exited(me.pid);
    let kind = if me.is_user() { "app" } else { "task" };
    crate::kprintln!("{kind} {} (pid {}) {how}", me.name, me.pid);
    interrupts::disable();
    {
        let mut s = SCHED.lock();
        s.finished.insert(me.pid, status);
        if let Some(e) = s.tasks.get_mut(&me.pid) {
            e.state = State::Exited;
        }
    }
    // This stack frame is never resumed: hold no reference into it.
    drop(me);
    notify(Events::TASK_EXIT);
    schedule();
    unreachable!("an exited task was scheduled again");
}

/// Switches to the next ready task (or the idle task), putting the running
/// task back in the queue if it can still run. Returns when the caller runs
/// again (never, for an exited task).
fn schedule() {
    let were_enabled = interrupts::are_enabled();
    interrupts::disable();
    let cpu = cpu::current();
    cpu.need_resched.store(false, Ordering::Relaxed);
    let switch = {
        let mut guard = SCHED.lock();
        let s = &mut *guard;
        let me = s.running[cpu.index];
        let idle = s.idle[cpu.index].expect("task::init ran");
        let state = s.tasks.get(&me).expect("the running task is known").state;
        let save: *mut u64 = match state {
            State::Exited => {
                let mut e = s.tasks.remove(&me).expect("known");
                let save = &mut *e.rsp as *mut u64;
                s.zombies.push(e);
                save
            }
            _ => {
                let e = s.tasks.get_mut(&me).expect("known");
                if state == State::Running {
                    e.state = State::Ready;
                    if me != idle {
                        s.ready.push_back(me);
                    }
                }
                &mut *e.rsp as *mut u64
            }
        };
        let next = s.pick(idle);
        let e = s.tasks.get_mut(&next).expect("picked tasks are known");
        e.state = State::Running;
        s.running[cpu.index] = next;
        (next != me).then(|| (save, *e.rsp, e.task.clone()))
    };
    if let Some((save, load, next)) = switch {
        match next.space.lock().as_ref() {
            Some(space) => space.activate(),
            None => paging::activate_kernel_tables(),
        }
        if let Some(stack) = next.stack.lock().as_ref()
            && next.is_user()
        {
            gdt::set_kernel_stack(stack.top());
            cpu.kernel_stack.store(stack.top(), Ordering::Relaxed);
        }
        cpu.current_task.store(next.pid, Ordering::Relaxed);
        // No reference may stay on a stack that might never run again.
        drop(next);
        // SAFETY: interrupts are off; `save` points into the running task's
        // boxed entry (alive until it is reaped after this switch), `load` is
        // the stack pointer the next task saved (or its initial context) on
        // its own mapped kernel stack, and its address space is loaded.
        unsafe { task_switch(save, load) };
        after_switch();
    }
    if were_enabled {
        interrupts::enable();
    }
}

/// Runs on the new task right after a switch: frees the tasks that exited
/// (their stacks are no longer in use now).
fn after_switch() {
    let zombies = core::mem::take(&mut SCHED.lock().zombies);
    for z in zombies {
        // Taken explicitly: an `Arc<Task>` left on an abandoned stack must
        // not keep the memory alive.
        let space = z.task.space.lock().take();
        let stack = z.task.stack.lock().take();
        drop(space);
        drop(stack);
    }
}

extern "C" fn idle_main(_: u64) -> ! {
    after_switch();
    loop {
        interrupts::disable();
        if SCHED.lock().ready.is_empty() {
            // sti; hlt: no wake-up can slip in between the check and the halt.
            interrupts::enable_and_hlt();
        } else {
            schedule();
        }
    }
}

extern "C" fn user_task_start(_: u64) -> ! {
    after_switch();
    let entry = current().user_entry;
    // SAFETY: the scheduler loaded this task's address space, where the
    // loader mapped the image (entry inside its code) and the user stack
    // below STACK_TOP, and pointed RSP0 and the per-CPU stack at this task's
    // kernel stack.
    unsafe { crate::arch::syscall::enter_user(entry, STACK_TOP) }
}

crate::kernel_test!(
    fn task_user_app_runs_to_exit_code_zero() {
        let app = crate::apps::find("hello").expect("hello is embedded (cargo shmos builds apps)");
        let before = crate::memory::frames::free_frames();
        let tasks = count();
        let pid = spawn_user("hello", "from a kernel test", app.elf).expect("spawns");
        assert_eq!(wait_exit(pid), ExitStatus::Code(0));
        let rsp0 = gdt::kernel_stack();
        assert!(
            rsp0 > paging::KERNEL_STACKS_BASE && rsp0.is_multiple_of(16),
            "RSP0 pointed at the app's kernel stack: {rsp0:#x}"
        );
        // The idle task or this one reaped it at the next switch.
        yield_now();
        assert_eq!(count(), tasks, "the task was reaped");
        assert_eq!(
            crate::memory::frames::free_frames(),
            before,
            "its address space went back"
        );
    }
);

crate::kernel_test!(
    fn task_user_faults_kill_only_the_app() {
        let app = crate::apps::find("crasher").expect("crasher is embedded");
        for how in ["null", "div", "priv", "ud", "kernel"] {
            let pid = spawn_user("crasher", how, app.elf).expect("spawns");
            assert_eq!(wait_exit(pid), ExitStatus::Killed, "crasher {how}");
        }
        let hello = crate::apps::find("hello").expect("hello is embedded");
        let pid = spawn_user("hello", "", hello.elf).unwrap();
        assert_eq!(wait_exit(pid), ExitStatus::Code(0), "the kernel carries on");
    }
);

crate::kernel_test!(
    fn task_sleep_and_wait_in_the_boot_task() {
        let start = crate::time::now_ns();
        sleep_ns(15_000_000);
        assert!(crate::time::now_ns() - start >= 15_000_000);
        let r: Result<(), TimedOut> = wait_event(Events::custom(31), Some(0), || false);
        assert_eq!(r, Err(TimedOut), "a past deadline times out at once");
        let r = wait_event(
            Events::custom(31),
            deadline_after(shmos_abi::NO_WAIT),
            || true,
        );
        assert_eq!(r, Ok(()), "NO_WAIT still checks once");
    }
);

crate::kernel_test!(
    fn task_spawn_refuses_bad_images() {
        let garbage = [0u64; 64];
        // SAFETY: u64s viewed as bytes; any pattern is a valid u8.
        let bytes = unsafe { core::slice::from_raw_parts(garbage.as_ptr().cast::<u8>(), 64 * 8) };
        assert_eq!(
            spawn_user("garbage", "", bytes).err(),
            Some(SpawnError::Image(LoadError::NotElf))
        );
    }
);

crate::kernel_test!(
    fn task_preemption_shares_the_cpu_between_spinners() {
        let app = crate::apps::find("spin").expect("spin is embedded");
        let a = spawn_user("spin", "a 3 15", app.elf).unwrap();
        let b = spawn_user("spin", "b 3 15", app.elf).unwrap();
        assert_eq!(wait_exit(a), ExitStatus::Code(0));
        assert_eq!(wait_exit(b), ExitStatus::Code(0));
    }
);
