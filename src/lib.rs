//! abgate: an A/B-testing and canary traffic router for ML inference.
//!
//! A request's life, by module: [`proxy`] accepts it, [`routing`] picks the
//! experiment and arm from one immutable table, [`proxy`] forwards and streams the
//! answer, [`outcomes`] records what happened per arm; [`admin`] exposes it and
//! [`config`] is the only reader of config text. [`lab`] (mock backends, load
//! driver, scenarios) serves the demo, the load tools and the tests, never `serve`.

pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod lab;
pub mod outcomes;
pub mod proxy;
pub mod routing;
pub mod stats;
pub mod store;
pub mod telemetry;
