//! A global allocator that counts live bytes and, once armed with a budget, hands control to a
//! handler (which ends the process) *before* an allocation that would go over it.
//!
//! Why it exists: a Rust process cannot survive a failed allocation on stable Rust (the alloc
//! error handler aborts), and regorus sizes some allocations from policy values
//! (`numbers.range(1, 3e14)` asks for 7.2 PB at once, `sprintf("%0999999999d", [1])` writes
//! a gigabyte before any check). The operator therefore evaluates Rego in a child process of
//! its own binary; this allocator is that child's memory limit: it refuses the allocation by
//! ending the child with a known status, and the operator denies the run and starts a new
//! child. In the operator process itself it is never armed and costs one relaxed load per
//! allocation.
//!
//! The binary installs it (`#[global_allocator] static A: BudgetAlloc = BudgetAlloc;`); a
//! process that does not (a test harness) never stops: [`arm`] then has no effect.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// The allocator: [`System`] plus accounting.
pub struct BudgetAlloc;

/// What the handler learns about the allocation that would have gone over the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exceeded {
    /// Bytes the refused allocation asked for (for a reallocation: the growth).
    pub requested: usize,
    /// Bytes allocated since [`arm`] and still live, before this allocation.
    pub used: usize,
    /// The budget given to [`arm`].
    pub budget: usize,
}

/// Whether allocations are counted at all (set once by [`track`]).
static TRACKING: AtomicBool = AtomicBool::new(false);
/// Live bytes counted since [`track`] (may go negative: memory allocated before is freed later).
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// `LIVE` at the last [`arm`].
static BASELINE: AtomicIsize = AtomicIsize::new(0);
/// The budget of the armed scope; `isize::MAX` when disarmed.
static BUDGET: AtomicIsize = AtomicIsize::new(isize::MAX);
/// Set once the handler was called: allocations made while the process ends pass unchecked.
static ENDING: AtomicBool = AtomicBool::new(false);
static HANDLER: OnceLock<fn(Exceeded) -> !> = OnceLock::new();

/// Starts counting allocations and sets what happens when an armed budget would be exceeded.
/// `handler` must not return; it may allocate (those allocations are not checked).
pub fn track(handler: fn(Exceeded) -> !) {
    let _ = HANDLER.set(handler);
    TRACKING.store(true, Ordering::SeqCst);
}

/// Allows `budget` more live bytes from now on; the next allocation past it calls the handler.
pub fn arm(budget: usize) {
    BASELINE.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
    BUDGET.store(
        isize::try_from(budget).unwrap_or(isize::MAX),
        Ordering::SeqCst,
    );
}

/// Lifts the budget (allocations are still counted).
pub fn disarm() {
    BUDGET.store(isize::MAX, Ordering::SeqCst);
}

/// Bytes allocated since [`arm`] and still live (0 when nothing was tracked).
pub fn used() -> usize {
    let used = LIVE.load(Ordering::Relaxed) - BASELINE.load(Ordering::Relaxed);
    usize::try_from(used).unwrap_or(0)
}

/// Counts `size` more bytes; calls the handler first if they would go over the budget.
#[inline]
fn charge(size: usize) {
    if !TRACKING.load(Ordering::Relaxed) {
        return;
    }
    let size = isize::try_from(size).unwrap_or(isize::MAX);
    let budget = BUDGET.load(Ordering::Relaxed);
    let before = LIVE.load(Ordering::Relaxed);
    if budget != isize::MAX && !ENDING.load(Ordering::Relaxed) {
        let used = before.saturating_sub(BASELINE.load(Ordering::Relaxed));
        if used.saturating_add(size) > budget
            && !ENDING.swap(true, Ordering::SeqCst)
            && let Some(handler) = HANDLER.get()
        {
            handler(Exceeded {
                requested: usize::try_from(size).unwrap_or(usize::MAX),
                used: usize::try_from(used).unwrap_or(0),
                budget: usize::try_from(budget).unwrap_or(usize::MAX),
            });
        }
    }
    LIVE.fetch_add(size, Ordering::Relaxed);
}

#[inline]
fn credit(size: usize) {
    if TRACKING.load(Ordering::Relaxed) {
        LIVE.fetch_sub(
            isize::try_from(size).unwrap_or(isize::MAX),
            Ordering::Relaxed,
        );
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// accounting around it touches only atomics and never unwinds (the handler ends the process).
unsafe impl GlobalAlloc for BudgetAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            credit(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            credit(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        credit(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            charge(new_size - old);
        }
        // SAFETY: forwarded as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        match (new.is_null(), new_size > old) {
            (true, true) => credit(new_size - old),
            (false, false) => credit(old - new_size),
            _ => {}
        }
        new
    }
}
