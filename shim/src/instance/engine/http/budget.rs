//! One memory budget for all the requests in flight: the pod's limit is
//! shared, so many concurrent requests fail their own growth cleanly
//! instead of together driving the pod into the kernel's OOM killer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::instance::engine::guest::Allowance;

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
}

impl Share {
    pub fn new(budget: &Arc<Budget>) -> Share {
        Share { budget: budget.clone(), held: 0 }
    }
}

impl Allowance for Share {
    fn take(&mut self, bytes: usize) -> bool {
        let taken = self.budget.take(bytes);
        if taken {
            self.held += bytes;
        }
        taken
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
        assert!(first.take(2 * MIB));
        assert!(!second.take(2 * MIB), "2 + 2 MiB exceeds 3 MiB");
        assert!(second.take(MIB));
        drop(first);
        assert!(second.take(2 * MIB), "the first instance's 2 MiB came back");
        assert!(!second.take(1));
    }

    #[test]
    fn no_limit_takes_anything() {
        assert!(Share::new(&Budget::new(None)).take(1 << 40));
    }
}
