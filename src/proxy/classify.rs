//! Classifying upstream failures: what kind of failure a client error was.
//!
//! Owns: walking a hyper client error's sources to one [`FailureKind`], the
//! vocabulary recorded per arm and reported to the client.

use crate::outcomes::FailureKind;

/// Maps a client error to the failure kind recorded and reported.
pub fn classify(err: &hyper_util::client::legacy::Error) -> FailureKind {
    use std::error::Error as _;
    let mut source = err.source();
    let mut io_kind = None;
    let mut hyper_err = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            hyper_err.get_or_insert(h);
        }
        source = s.source();
    }
    if err.is_connect() {
        return if io_kind == Some(std::io::ErrorKind::TimedOut) {
            FailureKind::ConnectTimeout
        } else {
            FailureKind::ConnectRefused
        };
    }
    match hyper_err {
        Some(h) if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() => {
            FailureKind::BadResponse
        }
        _ => FailureKind::Reset,
    }
}
