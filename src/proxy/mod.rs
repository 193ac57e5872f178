//! The data plane: listeners, forwarding with header hygiene, streaming bodies,
//! and error mapping to JSON problem responses.
//!
//! Never: decides routing (see `routing`) or judges outcomes (see `stats`).

pub mod activity;
pub mod body;
pub mod guarded_body;
pub mod handler;
pub mod headers;
pub mod limits;
pub mod problem;
pub mod server;
pub mod tls;
pub mod upstream;
