//! The wall clock, in one place.
//!
//! Owns: reading wall time as Unix milliseconds. Every layer that stamps a time
//! (the proxy's tokens, the store's records, the controller's decisions) reads it
//! here, so none of them has to reach into another layer for it, and a test can
//! see every reader with one grep.

/// Milliseconds since the Unix epoch; 0 if the system clock is before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
