//! Routing: which experiment a request belongs to and which arm serves it.
//!
//! Owns: the immutable [`RoutingTable`] snapshot, request matching and sticky
//! assignment. Pure and fast: no I/O, no locks, no allocation per request.

pub mod bucket;
pub mod matcher;
pub mod table;

pub use matcher::RequestView;
pub use table::{AssignError, Assignment, Route, RoutingTable, OVERRIDE_HEADER};

#[cfg(test)]
mod tests;
