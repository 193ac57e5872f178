//! Outcomes: what happened to each routed request, attributed to its arm.
//!
//! Owns: lock-free per-arm recorders and their histograms ([`recorder`],
//! [`histogram`]), the sums of declared metrics ([`metrics`]), signed outcome
//! tokens ([`token`]), feedback validation and its group-commit writer
//! ([`feedback`]), shadow copies paired with their primary twins ([`pairs`]), the per-arm summaries the controller and the admin API read
//! ([`summary`]), and saving/restoring counts across restarts ([`persist`]).
//!
//! Never: decides anything (the controller reads snapshots) or serves HTTP (the
//! proxy's `feedback` module is the endpoint's HTTP half); the only HTTP
//! vocabulary here is a response's status code, recorded per arm.

pub mod capture;
pub mod exposition;
pub mod feedback;
pub mod fleet;
pub mod histogram;
pub mod metrics;
pub mod pairs;
pub mod persist;
pub mod recorder;
pub mod scan;
pub mod summary;
pub mod token;

pub use recorder::{ArmRecorder, ArmSnapshot, FailureKind, RecorderRegistry, StatusClass};
