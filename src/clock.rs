//! The wall clock, in one place.
//!
//! Owns: reading wall time as Unix milliseconds, and the calling thread's CPU time. Every layer that stamps a time
//! (the proxy's tokens, the store's records, the controller's decisions) reads it
//! here, so none of them has to reach into another layer for it, and a test can
//! see every reader with one grep.

/// Milliseconds since the Unix epoch; 0 if the system clock is before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The CPU time the calling thread has used, or `None` where the platform
/// has no per-thread CPU clock. Unlike wall time it does not grow while the
/// thread waits for a core, so it measures work on a busy machine too.
pub fn thread_cpu_time() -> Option<std::time::Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call's duration.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_cpu_time_grows_with_work_on_this_thread() {
        let before = super::thread_cpu_time().expect("a thread CPU clock");
        let mut x = 0u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(20);
        while std::time::Instant::now() < deadline {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = super::thread_cpu_time().unwrap();
        assert!(after > before, "{before:?} -> {after:?} ({x})");
    }
}
