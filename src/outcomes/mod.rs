//! Outcomes: what happened to each routed request, attributed to its arm.
//!
//! Owns: lock-free per-arm recorders and their histograms.
//! Never: decides anything; the controller reads snapshots.

pub mod histogram;
pub mod recorder;

pub use recorder::{ArmRecorder, ArmSnapshot, FailureKind, RecorderRegistry, StatusClass};
pub mod feedback;
pub mod metrics;
pub mod persist;
pub mod summary;
pub mod token;
