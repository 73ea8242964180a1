//! Locks that are safe against interrupts on this CPU.
//!
//! A plain spinlock taken by both thread code and an interrupt handler
//! deadlocks when the interrupt arrives while the lock is held; `IrqMutex`
//! disables interrupts for as long as the guard lives.

use core::ops::{Deref, DerefMut};
use x86_64::instructions::interrupts;

/// A spinlock that keeps interrupts off while held.
pub struct IrqMutex<T> {
    inner: spin::Mutex<T>,
}

/// Guard of an [`IrqMutex`]; restores the interrupt flag when dropped.
pub struct IrqMutexGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    were_enabled: bool,
}

impl<T> IrqMutex<T> {
    /// A new unlocked mutex.
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    /// Disables interrupts, then spins until the lock is ours.
    pub fn lock(&self) -> IrqMutexGuard<'_, T> {
        let were_enabled = interrupts::are_enabled();
        interrupts::disable();
        IrqMutexGuard {
            guard: Some(self.inner.lock()),
            were_enabled,
        }
    }

    /// Takes the lock only if it is free (for the panic and fault paths,
    /// which must not wait on a lock their own CPU may hold).
    pub fn try_lock(&self) -> Option<IrqMutexGuard<'_, T>> {
        let were_enabled = interrupts::are_enabled();
        interrupts::disable();
        match self.inner.try_lock() {
            Some(g) => Some(IrqMutexGuard {
                guard: Some(g),
                were_enabled,
            }),
            None => {
                if were_enabled {
                    interrupts::enable();
                }
                None
            }
        }
    }
}

impl<T> Deref for IrqMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("guard present until drop")
    }
}

impl<T> DerefMut for IrqMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("guard present until drop")
    }
}

impl<T> Drop for IrqMutexGuard<'_, T> {
    fn drop(&mut self) {
        // Unlock first, then allow interrupts: never the other way round.
        drop(self.guard.take());
        if self.were_enabled {
            interrupts::enable();
        }
    }
}

crate::kernel_test!(
    fn sync_irq_mutex_restores_interrupt_flag() {
        let m = IrqMutex::new(5u32);
        assert!(interrupts::are_enabled());
        {
            let mut g = m.lock();
            *g += 1;
            assert!(!interrupts::are_enabled());
            assert!(m.try_lock().is_none(), "a held lock is not free");
        }
        assert!(interrupts::are_enabled());
        assert_eq!(*m.lock(), 6);
    }
);
