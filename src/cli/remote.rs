//! A small client for the admin API, shared by the CLI verbs.
//!
//! Exit codes: 0 ok, 1 the server refused (its problem detail is printed),
//! 3 the admin API could not be reached.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(clap::Args, Clone)]
pub struct RemoteArgs {
    /// Admin API base URL.
    #[arg(long, default_value = "http://127.0.0.1:9901", global = true)]
    pub admin: String,
    /// Admin bearer token.
    #[arg(
        long,
        env = "ABGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
}

pub struct Remote {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A failed call, already turned into a message and an exit code.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub fn exit(self) -> ExitCode {
        eprintln!("{}", self.message);
        ExitCode::from(self.code)
    }
}

pub struct Reply {
    pub etag: Option<String>,
    pub body: serde_json::Value,
}

impl Remote {
    pub fn new(args: &RemoteArgs) -> Remote {
        Remote {
            base: args.admin.trim_end_matches('/').to_string(),
            token: args.token.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request; 2xx bodies come back as JSON, anything else as a Failure
    /// carrying the server's problem detail.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, &'static str)>,
        if_match: Option<u64>,
    ) -> Result<Reply, Failure> {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(v) = if_match {
            req = req.header(header::IF_MATCH, format!("\"{v}\""));
        }
        let payload = match body {
            Some((text, content_type)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                Bytes::from(text)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(payload)).map_err(|e| Failure {
            message: format!("bad admin URL {url}: {e}"),
            code: 2,
        })?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| Failure {
                message: format!("the admin API at {} did not answer within 10s", self.base),
                code: 3,
            })?
            .map_err(|e| Failure {
                message: format!("cannot reach the admin API at {}: {e}", self.base),
                code: 3,
            })?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_string());
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if (200..300).contains(&status) {
            return Ok(Reply { etag, body });
        }
        let mut message = format!(
            "{status}: {}",
            body["detail"].as_str().unwrap_or("request refused")
        );
        if let Some(errors) = body["errors"].as_array() {
            for e in errors {
                let line = e["line"]
                    .as_u64()
                    .map(|l| format!(" (line {l})"))
                    .unwrap_or_default();
                message.push_str(&format!(
                    "\n  {}: {}{line}",
                    e["path"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                ));
            }
        }
        Err(Failure { message, code: 1 })
    }
}

/// Runs an async CLI body on a small runtime.
pub fn block_on<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}
