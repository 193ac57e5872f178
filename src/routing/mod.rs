//! Routing: which experiment a request belongs to and which arm serves it.
//!
//! Owns: the immutable [`RoutingTable`] (matching order, salts, bucket
//! layouts), request matching, sticky assignment and the cohort-preserving
//! [`Layout`] (a pure replay of an experiment's weight history). Pure and fast: no I/O, no clocks, no
//! allocation per request; the table is generic over what each arm carries, so
//! nothing here knows about sockets, pools or recorders. Publishing a table
//! (one `ArcSwap` store) is the control plane's job.

pub mod assign;
pub mod body;
pub mod bucket;
pub mod layout;
pub mod matcher;
pub mod table;

pub use assign::{AssignError, Assignment, OVERRIDE_HEADER};
pub use body::BodyFields;
pub use layout::Layout;
pub use matcher::RequestView;
pub use table::{
    ArmRoute, ExperimentRoute, Route, RoutingTable, ShadowRoute, DEFAULT_ROUTE_EXPERIMENT,
};

#[cfg(test)]
mod tests;
