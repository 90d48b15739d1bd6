//! The memory allocator: what it holds (for `/metrics`), and giving memory back to the
//! system after a connection storm.
//!
//! The default build runs on jemalloc (set in `main.rs`): per idle connection it kept
//! about a quarter less resident than glibc's allocator, whose per-thread arenas
//! fragment between the handshakes' short-lived buffers and the connections' long-lived
//! objects (docs/BENCHMARKS.md).
//!
//! Allocators keep freed memory for reuse: with glibc's, after 18,500 connections
//! closed, the node stayed at its peak RSS for good. jemalloc (the default build) returns
//! dirty pages after a decay time, but only when later allocations drive it, which an idle
//! node after a storm does not. So the node asks once the storm is over: once the number
//! of connections has moved by a tenth since the last trim and then held still for two
//! ticks. The call walks every arena under its lock, so it runs on a blocking thread.

/// Decides when to trim from the connection count seen once per tick.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    /// Connections at the last trim (or at start).
    at_trim: usize,
    /// The count seen on the previous tick.
    last: usize,
    /// Ticks the count has held still (within 1 %) since it last moved.
    still: u32,
}

/// Ticks the count must hold still before a trim.
const STILL_TICKS: u32 = 2;

impl TrimPolicy {
    /// Whether to trim now, given this tick's connection count.
    pub fn tick(&mut self, connections: usize) -> bool {
        let moved = connections.abs_diff(self.last) > self.last / 100;
        self.last = connections;
        if moved {
            self.still = 0;
            return false;
        }
        self.still = self.still.saturating_add(1);
        let changed = connections.abs_diff(self.at_trim) > self.at_trim.max(1000) / 10;
        if changed && self.still >= STILL_TICKS {
            self.at_trim = connections;
            return true;
        }
        false
    }
}

/// Returns the allocator's free memory to the system: jemalloc's dirty pages of every
/// arena (the default build), or glibc's free pages (`malloc_trim`) when built without
/// the `jemalloc` feature; elsewhere nothing.
pub fn trim() {
    #[cfg(feature = "jemalloc")]
    {
        // `MALLCTL_ARENAS_ALL` (4096) names every arena at once.
        let name = c"arena.4096.purge";
        // SAFETY: a void control: no old or new value, so no pointers but the name, a
        // NUL-terminated string that outlives the call.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
    #[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes no pointers and is safe to call at any time from any
        // thread (it locks each arena itself).
        unsafe {
            malloc_trim(0);
        }
    }
}

/// What the allocator holds, in bytes (jemalloc's statistics, refreshed at each call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in the pages that hold live allocations (allocated plus size-class rounding
    /// and partly used slabs).
    pub active: u64,
    /// Bytes of the allocator's own metadata.
    pub metadata: u64,
    /// Bytes physically resident in pages the allocator maps (its share of RSS).
    pub resident: u64,
}

/// The allocator's statistics, or `None` when it keeps none (built without `jemalloc`).
pub fn stats() -> Option<Stats> {
    #[cfg(feature = "jemalloc")]
    {
        // Statistics are a snapshot taken when `epoch` is written.
        let mut epoch: u64 = 1;
        // SAFETY: `epoch` takes a u64 by pointer, valid for the call.
        let refreshed = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"epoch".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&raw mut epoch).cast(),
                size_of::<u64>(),
            )
        };
        if refreshed != 0 {
            return None;
        }
        Some(Stats {
            allocated: read_size(c"stats.allocated")?,
            active: read_size(c"stats.active")?,
            metadata: read_size(c"stats.metadata")?,
            resident: read_size(c"stats.resident")?,
        })
    }
    #[cfg(not(feature = "jemalloc"))]
    {
        None
    }
}

/// Reads one `size_t` statistic.
#[cfg(feature = "jemalloc")]
fn read_size(name: &std::ffi::CStr) -> Option<u64> {
    let mut value: usize = 0;
    let mut len = size_of::<usize>();
    // SAFETY: the statistic is a size_t, read into `value` whose size `len` states;
    // both outlive the call, and the name is NUL-terminated.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&raw mut value).cast(),
            &raw mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (status == 0 && len == size_of::<usize>()).then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_storm_is_over() {
        let mut p = TrimPolicy::default();
        // Connections arrive: no trim while the count moves.
        for n in [0, 2_000, 6_000, 10_000] {
            assert!(!p.tick(n));
        }
        assert!(!p.tick(10_000), "held still one tick");
        assert!(p.tick(10_010), "two ticks still (within 1 %): trim");
        assert!(!p.tick(10_000), "nothing new since the trim");
        // They leave.
        assert!(!p.tick(3_000));
        assert!(!p.tick(0));
        assert!(!p.tick(0));
        assert!(p.tick(0));
        for _ in 0..10 {
            assert!(!p.tick(0));
        }
    }

    #[test]
    fn small_changes_do_not_trim() {
        let mut p = TrimPolicy::default();
        for _ in 0..5 {
            assert!(!p.tick(50));
        }
        let mut p = TrimPolicy::default();
        p.tick(100_000);
        p.tick(100_000);
        assert!(p.tick(100_000));
        for n in [101_000, 99_000, 100_500, 100_500, 100_500] {
            assert!(!p.tick(n), "within a tenth of the last trim");
        }
    }

    /// jemalloc's statistics come from the library itself, also in a test binary whose
    /// own allocations go to the system allocator.
    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_reports_its_statistics() {
        // SAFETY: a matching allocation and free through jemalloc's own entry points.
        unsafe {
            let p = tikv_jemalloc_sys::malloc(1 << 20);
            assert!(!p.is_null());
            let held = stats().expect("stats");
            assert!(held.allocated >= 1 << 20, "{held:?}");
            assert!(
                held.active >= held.allocated && held.resident >= held.active,
                "{held:?}"
            );
            tikv_jemalloc_sys::free(p);
        }
    }

    #[test]
    fn trimming_is_harmless() {
        let v: Vec<Vec<u8>> = (0..1000).map(|_| vec![0u8; 1024]).collect();
        drop(v);
        trim();
    }
}
