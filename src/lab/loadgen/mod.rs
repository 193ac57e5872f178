//! Honest, bounded load driver for abgate and the mock backend.
//!
//! * Open loop ([`LoadMode::OpenLoop`]): constant arrival rate; each request's latency is
//!   measured from its *scheduled* send time, so queueing behind slow responses is counted
//!   (no coordinated omission).
//! * Closed loop ([`LoadMode::ClosedLoop`]): N workers back to back.
//!
//! Every run is bounded by both `max_requests` and `max_duration` and only targets loopback
//! URLs. Responses are tallied per arm (`x-abgate-arm`, else `x-mock-backend`), and for a
//! fraction of tokened responses the mock's true outcome is posted to the proxy's feedback
//! endpoint. A [`Workload`] replaces the built-in request kinds when each request must
//! differ or each answer must be read (see `abgate-feedback-bench`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), abgate::lab::loadgen::LoadError> {
//! use std::time::Duration;
//! use abgate::lab::loadgen::{run, LoadMode, LoadSpec};
//! let mut spec = LoadSpec::new("http://127.0.0.1:8080");
//! spec.mode = LoadMode::OpenLoop { rate_per_s: 500.0, connections: 64, max_in_flight: 4096 };
//! spec.max_requests = 5_000;
//! spec.max_duration = Duration::from_secs(10);
//! let report = run(spec).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

mod client;
mod driver;
mod error;
pub mod feedback;
mod recorder;
pub mod report;
mod request;
mod spec;
mod workload;

pub use driver::{run, run_with_progress, run_workload};
pub use error::LoadError;
pub use recorder::LoadProgress;
pub use report::{ArmCounts, ErrorCounts, FeedbackCounts, LoadReport, Quantiles};
pub use request::{HEADER_ARM, HEADER_EXPERIMENT, HEADER_TOKEN};
pub use spec::{
    loopback_uri, parse_duration_flag, FeedbackSpec, FeedbackValue, LoadMode, LoadSpec, Protocol,
    RequestKind, DEFAULT_FEEDBACK_PATH,
};
pub use workload::{Reply, WorkRequest, Workload};
