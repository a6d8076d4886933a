//! One memory budget for all the requests in flight: the pod's limit is
//! shared, so many concurrent requests fail their own growth cleanly
//! instead of together driving the pod into the kernel's OOM killer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use wasmtime::ResourceLimiter;

/// Bytes of linear memory that all instances together may hold.
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    /// `None` is no limit.
    pub fn new(limit: Option<u64>) -> Arc<Budget> {
        let limit = limit.map_or(usize::MAX, |bytes| usize::try_from(bytes).unwrap_or(usize::MAX));
        Arc::new(Budget { limit, used: AtomicUsize::new(0) })
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(bytes).filter(|total| *total <= self.limit))
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One instance's part of the budget, returned when the instance's store
/// is dropped.
pub struct Share {
    budget: Arc<Budget>,
    held: usize,
    /// A growth was refused: the budget was spent.
    pub reached: bool,
}

impl Share {
    pub fn new(budget: &Arc<Budget>) -> Share {
        Share { budget: budget.clone(), held: 0, reached: false }
    }
}

impl ResourceLimiter for Share {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let extra = desired.saturating_sub(current);
        if !self.budget.take(extra) {
            self.reached = true;
            return Ok(false);
        }
        self.held += extra;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn instances_share_the_limit_and_return_it() {
        let budget = Budget::new(Some(3 * MIB as u64));
        let mut first = Share::new(&budget);
        let mut second = Share::new(&budget);
        assert!(first.memory_growing(0, 2 * MIB, None).unwrap());
        assert!(!second.memory_growing(0, 2 * MIB, None).unwrap(), "2 + 2 MiB exceeds 3 MiB");
        assert!(second.reached && !first.reached);
        assert!(second.memory_growing(0, MIB, None).unwrap());
        drop(first);
        assert!(second.memory_growing(MIB, 3 * MIB, None).unwrap(), "the first instance's 2 MiB came back");
        assert!(!second.memory_growing(3 * MIB, 3 * MIB + 1, None).unwrap());
    }

    #[test]
    fn no_limit_allows_up_to_the_memory_maximum() {
        let mut share = Share::new(&Budget::new(None));
        assert!(share.memory_growing(0, 1 << 40, None).unwrap());
        assert!(!share.memory_growing(0, 2 * MIB, Some(MIB)).unwrap());
    }
}
