//! Mock model backend for load tests and demos.
//!
//! Serves OpenAI-compatible `POST /v1/chat/completions` (JSON or SSE with `"stream": true`),
//! KServe v2 `POST /v2/models/{name}/infer`, plain `POST /predict` and `GET /healthz` over
//! HTTP/1.1 and h2c on one port. Each model request draws a seeded [`decision::Decision`]
//! (latency, injected 500, connection reset, outcome, reward) and reports the simulated truth
//! in `x-mock-backend`, `x-mock-outcome`, `x-mock-reward`, `x-model-output-tokens` and `x-mock-latency-ms`.
//!
//! Chat answers carry OpenAI-style `usage` (prompt tokens from `prompt_tokens` or estimated from
//! the request, completion tokens = `chunks`, varied by `tokens_jitter`); streams start with a
//! role-only chunk, send the first content `first_token_ms` later, add a usage chunk when the
//! request asks with `stream_options.include_usage`, and a share of them are cut short
//! (`truncate_rate`) or end with `finish_reason: "length"` (`length_rate`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), abgate::lab::mock::MockError> {
//! use abgate::lab::mock::{MockServer, MockSpec};
//! let server = MockServer::start(MockSpec::default(), "127.0.0.1:0".parse().unwrap()).await?;
//! println!("mock on {}", server.url());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod body;
pub mod decision;
mod error;
mod handlers;
mod server;
mod spec;
mod state;

pub use error::{MockError, SpecError};
pub use handlers::MAX_REQUEST_BODY;
pub use server::{serve, serve_with_stats, MockServer, MockStats};
pub use spec::{LatencyDist, MockSpec, RewardDist, ServeArg, StreamSpec};

/// Response header naming the backend that produced the response.
pub const HEADER_BACKEND: &str = "x-mock-backend";
/// Response header with the simulated binary outcome, `0` or `1`.
pub const HEADER_OUTCOME: &str = "x-mock-outcome";
/// Response header with the simulated reward (decimal f64).
pub const HEADER_REWARD: &str = "x-mock-reward";
/// Response header with the simulated service time drawn for this request (ms, 3 decimals).
pub const HEADER_LATENCY: &str = "x-mock-latency-ms";
/// Response header with the number of generated tokens (= stream chunks).
pub const HEADER_OUTPUT_TOKENS: &str = "x-model-output-tokens";
