//! The data plane, in the order of a request's life: [`listener`] accepts the
//! connection (limits, TLS), [`handler`] admits the request and routes it,
//! [`forward`] sends it to its upstream and streams the answer back through the
//! [`body`] wrappers, [`classify`] names what failed, [`problem`] answers for
//! abgate in one vocabulary, [`shadow`] copies a share of an experiment's requests
//! to its shadow arms, [`capture`] keeps a sample of requests and answers for
//! training. [`wiring`] builds what each arm carries; [`plane`]
//! is what all of them share; [`accept`] is the accept loop every listener uses.
//!
//! Never: decides routing (see `routing`), judges outcomes (see `stats`), or
//! reads or writes the store or the control plane.

pub mod accept;
pub mod activity;
pub mod body;
pub mod capture;
pub mod classify;
pub mod feedback;
pub mod forward;
pub mod guarded_body;
pub mod handler;
pub mod headers;
pub mod limits;
pub mod listener;
pub mod peek;
pub mod plane;
pub mod problem;
pub mod shadow;
pub mod tls;
pub mod upstream;
pub mod usage;
pub mod wake_gate;
pub mod wiring;
