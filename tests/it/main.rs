//! The integration tests: one binary (one link of the crate instead of one per
//! file), one module per area, shared fixtures in `support`.

mod pg;
mod support;

mod architecture;
mod capture;
mod cli;
mod control_binary;
mod control_plane;
mod controller;
mod data_plane;
mod demo;
mod drift_watch;
mod failures_and_streaming;
mod feedback;
mod feedback_durability;
mod feedback_loop;
mod fleet;
mod fleet_replicas;
mod hardening_framing;
mod hardening_h2;
mod hardening_limits;
mod hardening_memory;
mod hardening_tls;
mod inference;
mod loadgen;
mod mock_backend;
mod model_arms;
mod scenarios;
mod shadow;
mod shadow_step;
mod stats_decision;
mod stats_drift;
mod stats_montecarlo;
mod stats_paired;
mod stats_shadow_gate;
mod stats_vectors;
mod ui;
mod ui_browser;
mod upstream_pool;
