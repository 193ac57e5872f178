//! Typed errors of the mock backend.

use std::net::SocketAddr;

/// Invalid mock backend specification.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A `key=value` item had no `=`.
    #[error("expected key=value, got `{0}`")]
    MissingValue(String),
    /// The key is not one of the documented keys.
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    /// The value could not be parsed for this key.
    #[error("bad value `{value}` for `{key}`")]
    BadValue {
        /// Key whose value was bad.
        key: String,
        /// The offending value.
        value: String,
    },
    /// The value parsed but is outside its allowed range.
    #[error("`{key}` out of range: {value}")]
    OutOfRange {
        /// Key whose value was out of range.
        key: &'static str,
        /// The offending value.
        value: String,
    },
    /// The leading address is not `ip:port`.
    #[error("bad listen address `{0}` (expected ip:port)")]
    BadAddr(String),
    /// The mock only listens on loopback addresses.
    #[error("refusing non-loopback listen address {0}")]
    NonLoopback(SocketAddr),
}

/// Failure starting or running a mock server.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// The spec failed validation.
    #[error("invalid mock spec: {0}")]
    Spec(#[from] SpecError),
    /// Binding or accepting failed.
    #[error("mock server I/O error: {0}")]
    Io(#[from] std::io::Error),
}
