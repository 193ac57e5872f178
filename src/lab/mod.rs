//! The lab: everything that stands in for the world around abgate so it can be
//! watched deciding. A [`mock`] model backend with seeded truth, a bounded
//! [`loadgen`] load driver that reports that truth back as feedback, and the
//! [`scenario`] runner that wires both to a real in-process abgate.
//!
//! This is what `abgate demo`, `abgate scenario`, the load binaries
//! (`abgate-mock`, `abgate-load`, `abgate-feedback-bench`) and the tests use; it is
//! never used by `serve`. Nothing below the lab imports it, so the router can be
//! read (and shipped) without it. It only ever targets loopback addresses.

pub mod loadgen;
pub mod mock;
pub mod scenario;
