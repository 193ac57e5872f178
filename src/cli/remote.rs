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
        let resp = self.send(method, path, body, if_match).await?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_string());
        let bytes = read_all(resp.into_body()).await;
        if !(200..300).contains(&status) {
            return Err(refusal(status, &bytes));
        }
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok(Reply { etag, body })
    }

    /// GETs `path` and copies a 2xx body to `out` as it arrives (an export
    /// of millions of lines is never held whole); anything else is a Failure
    /// with the server's problem detail. A body cut short is a Failure too,
    /// so a script never takes a truncated export for a complete one.
    pub async fn stream(&self, path: &str, out: &mut impl std::io::Write) -> Result<u64, Failure> {
        let resp = self.send(Method::GET, path, None, None).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if !(200..300).contains(&status) {
            return Err(refusal(status, &read_all(body).await));
        }
        let cannot_write = |e: std::io::Error| Failure {
            message: format!("cannot write the export: {e}"),
            code: 1,
        };
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure {
                message: format!("the export was cut short after {written} bytes: {e}"),
                code: 1,
            })?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).map_err(cannot_write)?;
                written += data.len() as u64;
            }
        }
        out.flush().map_err(cannot_write)?;
        Ok(written)
    }

    /// One request with the token, `If-Match` and body as given, answered
    /// within 10 s (its head; the body is the caller's to read).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, &'static str)>,
        if_match: Option<u64>,
    ) -> Result<http::Response<hyper::body::Incoming>, Failure> {
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
        tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| Failure {
                message: format!("the admin API at {} did not answer within 10s", self.base),
                code: 3,
            })?
            .map_err(|e| Failure {
                message: format!("cannot reach the admin API at {}: {e}", self.base),
                code: 3,
            })
    }
}

/// A whole body (one that breaks off reads as what arrived: nothing).
async fn read_all(body: hyper::body::Incoming) -> Bytes {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

/// A non-2xx answer as a Failure: the problem's detail, and each config
/// error with its path and line when the body lists them.
fn refusal(status: u16, bytes: &[u8]) -> Failure {
    let body: serde_json::Value = serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null);
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
    Failure { message, code: 1 }
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
