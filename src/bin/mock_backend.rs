//! `abgate-mock`: serve one or more simulated model backends from one process.
//!
//! ```text
//! abgate-mock --serve 127.0.0.1:9001,name=control,latency=lognormal:20:0.5,outcome_p=0.30 \
//!             --serve 127.0.0.1:9002,name=canary,latency=fixed:25,error_rate=0.05,outcome_p=0.33
//! ```

use abgate::lab::mock::{MockServer, ServeArg};
use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "abgate-mock",
    about = "Mock model backends (OpenAI chat/SSE, KServe v2, /predict) for abgate load tests",
    after_help = "SPEC = ADDR,key=value,...  keys: name, latency (fixed:MS | normal:MEAN:SD | \
lognormal:MEDIAN:SIGMA), error_rate, reset_rate, hang_rate, outcome_p, reward (fixed:V | normal:MEAN:SD), \
bytes, chunks, token_delay_ms, seed. ADDR must be loopback (port 0 = any free port)."
)]
struct Args {
    /// Backend to serve (repeatable), e.g. 127.0.0.1:9001,name=canary,latency=fixed:20.
    #[arg(long = "serve", value_name = "SPEC", required = true)]
    serve: Vec<ServeArg>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut servers = Vec::with_capacity(args.serve.len());
    for arg in args.serve {
        let server = MockServer::start(arg.spec, arg.addr)
            .await
            .with_context(|| format!("starting mock on {}", arg.addr))?;
        println!(
            "abgate-mock: backend `{}` listening on {}",
            server.name(),
            server.url()
        );
        servers.push(server);
    }
    shutdown_signal().await?;
    for server in servers {
        let (name, served) = (server.name().to_string(), server.requests_served());
        server.shutdown().await?;
        println!("abgate-mock: backend `{name}` stopped after {served} requests");
    }
    Ok(())
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
