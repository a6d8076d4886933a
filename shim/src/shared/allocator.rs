//! glibc's allocator tuned for small processes: the shim daemon and every
//! instance allocate little, so per-thread arenas and free heap kept for
//! later are memory paid per task for nothing.

/// One arena instead of one per allocating thread. Call before any thread exists.
#[cfg(target_env = "gnu")]
pub fn limit_arenas() {
    // Safety: mallopt only sets an allocator tunable, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// musl's allocator has no per-thread arenas.
#[cfg(not(target_env = "gnu"))]
pub fn limit_arenas() {}

/// Gives free heap back to the kernel (an instance's setup buffers), so an
/// idle process keeps only what it uses.
#[cfg(target_env = "gnu")]
pub fn release_free_heap() {
    // Safety: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// musl's allocator returns freed memory to the kernel by itself.
#[cfg(not(target_env = "gnu"))]
pub fn release_free_heap() {}
