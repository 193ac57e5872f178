//! Classifying upstream failures: what kind of failure a client error was.
//!
//! Owns: walking an upstream error's sources to one [`FailureKind`], the
//! vocabulary recorded per arm and reported to the client.

use super::upstream::UpstreamError;
use crate::outcomes::FailureKind;

/// Maps an upstream error to the failure kind recorded and reported.
pub fn classify(err: &UpstreamError) -> FailureKind {
    match err {
        UpstreamError::Connect(e) => connect_failure(first_io_kind(e.as_ref())),
        UpstreamError::Hyper(h) => hyper_failure(h),
        UpstreamError::Closed => FailureKind::Reset,
        UpstreamError::Pooled(e) => {
            if e.is_connect() {
                return connect_failure(first_io_kind(e));
            }
            match first_hyper_error(e) {
                Some(h) => hyper_failure(h),
                None => FailureKind::Reset,
            }
        }
    }
}

fn connect_failure(io: Option<std::io::ErrorKind>) -> FailureKind {
    if io == Some(std::io::ErrorKind::TimedOut) {
        FailureKind::ConnectTimeout
    } else {
        FailureKind::ConnectRefused
    }
}

fn hyper_failure(h: &hyper::Error) -> FailureKind {
    if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
        FailureKind::BadResponse
    } else {
        FailureKind::Reset
    }
}

/// `err` and its sources, outermost first.
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

fn first_io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    chain(err).find_map(|e| e.downcast_ref::<std::io::Error>().map(|io| io.kind()))
}

fn first_hyper_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a hyper::Error> {
    chain(err).find_map(|e| e.downcast_ref::<hyper::Error>())
}
