//! Typed errors of the load driver.

/// Why a load run could not start. Failures of individual requests are never errors: they are
/// counted by kind in the report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The target or feedback URL does not point at a loopback host.
    #[error("refusing non-loopback URL `{0}`: only 127.0.0.0/8, [::1] and localhost are allowed")]
    NonLoopback(String),
    /// The URL could not be parsed or uses an unsupported scheme.
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl {
        /// The offending URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A spec field is out of range (e.g. zero bounds or a rate of 0).
    #[error("invalid load spec: {0}")]
    InvalidSpec(String),
    /// The open-loop pacer thread could not be started.
    #[error("cannot start the open-loop pacer thread: {0}")]
    Pacer(String),
}
