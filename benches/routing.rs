//! The per-request routing decision: `RoutingTable::route` + `ExperimentRoute::assign`,
//! exactly as `proxy::handler` calls them, on the data plane's wired table. Target: < 1 µs for a realistic table.
//!
//! Groups:
//! - `route_assign/3exp_sticky`: 3 experiments with path and header matches, the
//!   last one matches, sticky on `x-user-id` (XXH3 bucket).
//! - `route_assign/3exp_keyless`: same table, no unit key: random bucket per request
//!   (`rand::random_range`, as the handler does).
//! - `route_assign/50exp_4arms_last`: 50 experiments × 4 arms, only the last matches;
//!   the linear scan's worst case.
//! - `rewrite/*`: the rest of the handler's synchronous per-request work that is
//!   public (hop-by-hop stripping, `x-forwarded-*`, upstream URI), for scale.
//!
//! - `table/build_swap_50x4`: building a 50 × 4 table from a parsed config with
//!   warm pools and recorders, and publishing it with `ArcSwap::store` (the control
//!   plane's reload cost; target < 1 ms).
//! - `table/load_idle` vs `table/load_under_swaps`: the data plane's one
//!   `load_full()` per request, alone and while another thread swaps tables
//!   continuously (it must stay flat).
//!
//! Before timing, each case is run once under a counting allocator and its
//! allocations per request are printed, so "no allocation per request" is checked,
//! not assumed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use abgate::config::BUCKETS;
use abgate::outcomes::RecorderRegistry;
use abgate::proxy::headers::{add_forwarded, peer_value, strip_hop_by_hop};
use abgate::proxy::upstream::UpstreamPool;
use abgate::proxy::wiring::{ArmWiring, Published};
use abgate::routing::{matcher, RequestView, Route, RoutingTable};
use abgate::telemetry::Telemetry;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Uri};

/// Counts allocations so each case can report how many it makes per request.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; the counter is
// the only addition.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `n` calls of `f`, per call.
fn allocations_per_call(n: u64, mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..n {
        f();
    }
    (ALLOCATIONS.load(Relaxed) - before) as f64 / n as f64
}

/// Three experiments as a gateway would have them: the first two look at the same
/// path family but need a header the request lacks, the third matches.
const THREE_EXPERIMENTS: &str = r#"
backends:
  chat-stable:     { url: "http://127.0.0.1:9201" }
  chat-canary:     { url: "http://127.0.0.1:9202" }
  chat-enterprise: { url: "http://127.0.0.1:9203" }
  embed-v3:        { url: "http://127.0.0.1:9301" }
  embed-v4:        { url: "http://127.0.0.1:9302/v4" }
default_backend: chat-stable
experiments:
  - name: enterprise-chat
    match:
      path_prefix: /v1/chat/completions
      headers:
        - { name: x-tenant-tier, exact: enterprise }
    unit: { header: x-tenant-id }
    arms:
      - { name: stable, backend: chat-stable, weight: 95 }
      - { name: enterprise, backend: chat-enterprise, weight: 5 }
  - name: embeddings
    match:
      path_prefix: /v1/embeddings
      headers:
        - { name: x-model, regex: "^text-embedding-(3|4)" }
    unit: { header: x-user-id }
    arms:
      - { name: v3, backend: embed-v3, weight: 80 }
      - { name: v4, backend: embed-v4, weight: 20 }
  - name: chat-canary
    match:
      host: api.example.com
      path_prefix: /v1/chat/completions
      headers:
        - { name: x-tenant, prefix: acme }
    unit: { header: x-user-id }
    allow_override: true
    arms:
      - { name: stable, backend: chat-stable, weight: 90 }
      - { name: canary, backend: chat-canary, weight: 10 }
"#;

/// 50 experiments × 4 arms on distinct path prefixes; only the last one matches
/// `/v1/models/m49/predict`.
fn fifty_experiments() -> String {
    let mut y = String::from("backends:\n");
    for b in 0..4 {
        y.push_str(&format!(
            "  b{b}: {{ url: \"http://127.0.0.1:{}\" }}\n",
            9400 + b
        ));
    }
    y.push_str("experiments:\n");
    for e in 0..50 {
        y.push_str(&format!(
            "  - name: exp-{e}\n    match:\n      path_prefix: /v1/models/m{e}\n      \
             headers:\n        - {{ name: x-tenant, prefix: acme }}\n    \
             unit: {{ header: x-user-id }}\n    arms:\n"
        ));
        for a in 0..4 {
            y.push_str(&format!(
                "      - {{ name: arm-{a}, backend: b{a}, weight: 25 }}\n"
            ));
        }
    }
    y
}

fn build(yaml: &str) -> RoutingTable<ArmWiring> {
    let config = abgate::config::parse(yaml).expect("bench config is valid");
    let recorders = RecorderRegistry::new(Telemetry::new());
    Published::build(&config, 1, &UpstreamPool::default(), &recorders).routes
}

/// A request as a client library sends it: the usual headers plus the unit key
/// (if `user` is given) and the tenant header the last experiment matches on.
fn request_headers(user: Option<usize>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &'static str, v: &str| {
        h.insert(k, HeaderValue::from_str(v).expect("valid header value"));
    };
    put("host", "api.example.com");
    put("user-agent", "OpenAI/Python 1.40.0");
    put("content-type", "application/json");
    put("accept", "application/json");
    put("content-length", "128");
    put("authorization", "Bearer sk-0123456789abcdef");
    put("x-request-id", "3f2a9c1e-8d7b-4b0a-9e61-0c5d2f7a1b44");
    put("x-tenant", "acme-corp");
    if let Some(u) = user {
        put("x-user-id", &format!("user-{u}"));
    }
    h
}

/// Distinct users so the arm choice (and its branch) varies like real traffic.
const USERS: usize = 256;

/// What the handler does per request: build the view, route, assign. Returns the
/// arm index (or `usize::MAX` for the default route) so nothing is optimised away.
fn decide(
    table: &RoutingTable<ArmWiring>,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> usize {
    let view = RequestView {
        host: host.map(matcher::host_without_port),
        path,
        headers,
        body: None,
    };
    match table.route(&view) {
        Route::Experiment(e) => {
            e.assign(headers, || rand::random_range(0..BUCKETS))
                .expect("no override header in bench requests")
                .arm
        }
        Route::Default(_) | Route::NotFound | Route::NeedsBody { .. } => usize::MAX,
    }
}

fn route_assign(c: &mut Criterion) {
    let three = build(THREE_EXPERIMENTS);
    let fifty = build(&fifty_experiments());
    let keyed: Vec<HeaderMap> = (0..USERS).map(|u| request_headers(Some(u))).collect();
    let keyless = request_headers(None);
    let chat = "/v1/chat/completions";
    let m49 = "/v1/models/m49/predict";

    // Sanity: every case must hit the experiment it claims to measure.
    let matched =
        |t: &RoutingTable<ArmWiring>, path: &str, h: &HeaderMap| match t.route(&RequestView {
            host: Some("api.example.com"),
            path,
            headers: h,
            body: None,
        }) {
            Route::Experiment(e) => e.name.clone(),
            _ => String::new(),
        };
    assert_eq!(matched(&three, chat, &keyed[0]), "chat-canary");
    assert_eq!(matched(&three, chat, &keyless), "chat-canary");
    assert_eq!(matched(&fifty, m49, &keyed[0]), "exp-49");

    let host = Some("api.example.com:8080");
    let mut i = 0usize;
    let per_req = allocations_per_call(10_000, || {
        i = (i + 1) % USERS;
        black_box(decide(&three, host, chat, &keyed[i]));
    });
    println!("allocations per request: 3exp_sticky {per_req:.2}");
    let per_req = allocations_per_call(10_000, || {
        black_box(decide(&three, host, chat, &keyless));
    });
    println!("allocations per request: 3exp_keyless {per_req:.2}");
    let per_req = allocations_per_call(10_000, || {
        i = (i + 1) % USERS;
        black_box(decide(&fifty, host, m49, &keyed[i]));
    });
    println!("allocations per request: 50exp_4arms_last {per_req:.2}");

    let mut g = c.benchmark_group("route_assign");
    g.bench_function("3exp_sticky", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % USERS;
            decide(&three, black_box(host), black_box(chat), &keyed[i])
        })
    });
    g.bench_function("3exp_keyless", |b| {
        b.iter(|| decide(&three, black_box(host), black_box(chat), &keyless))
    });
    g.bench_function("50exp_4arms_last", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % USERS;
            decide(&fifty, black_box(host), black_box(m49), &keyed[i])
        })
    });
    g.finish();
}

/// The handler's other synchronous per-request steps, for comparison with routing.
fn rewrite(c: &mut Criterion) {
    let three = build(THREE_EXPERIMENTS);
    let upstream = match three.route(&RequestView {
        host: Some("api.example.com"),
        path: "/v1/chat/completions",
        headers: &request_headers(Some(1)),
        body: None,
    }) {
        Route::Experiment(e) => e.arms[0].carry.target.upstream.clone(),
        _ => unreachable!("asserted in route_assign"),
    };
    let headers = request_headers(Some(7));
    let host = HeaderValue::from_static("api.example.com");
    let peer = peer_value(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let uri: Uri = "/v1/chat/completions?x=1".parse().expect("valid uri");

    let mut scratch = headers.clone();
    let per_req = allocations_per_call(1_000, || {
        scratch.clone_from(&headers);
        strip_hop_by_hop(&mut scratch);
        add_forwarded(&mut scratch, &peer, "http", Some(&host));
        black_box(upstream.uri_for(uri.path_and_query()));
    });
    let per_clone = allocations_per_call(1_000, || {
        scratch.clone_from(&headers);
    });
    println!(
        "allocations per request: headers+uri rewrite {:.2}",
        per_req - per_clone
    );

    let mut g = c.benchmark_group("rewrite");
    g.bench_function("strip_hop_by_hop+add_forwarded", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| {
                strip_hop_by_hop(h);
                add_forwarded(h, &peer, "http", Some(&host));
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("uri_for", |b| {
        b.iter(|| upstream.uri_for(black_box(uri.path_and_query())))
    });
    g.finish();
}

fn table_swaps(c: &mut Criterion) {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let config = abgate::config::parse(&fifty_experiments()).expect("bench config is valid");
    let recorders = RecorderRegistry::new(Telemetry::new());
    let pools = UpstreamPool::default();
    let cell = Arc::new(arc_swap::ArcSwap::from_pointee(Published::build(
        &config, 1, &pools, &recorders,
    )));
    let mut version = 1;
    c.bench_function("table/build_swap_50x4", |b| {
        b.iter(|| {
            version += 1;
            let t = Published::build(&config, version, &pools, &recorders);
            cell.store(Arc::new(t));
        })
    });
    c.bench_function("table/load_idle", |b| {
        b.iter(|| black_box(cell.load_full().version))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (cell, stop) = (cell.clone(), stop.clone());
        let config = config.clone();
        std::thread::spawn(move || {
            let recorders = RecorderRegistry::new(Telemetry::new());
            let pools = UpstreamPool::default();
            let mut v = 1_000_000;
            // Bounded: at most 10 minutes' worth of swaps, and stops when told.
            while !stop.load(Relaxed) && v < 1_000_000 + 600_000 {
                v += 1;
                cell.store(Arc::new(Published::build(&config, v, &pools, &recorders)));
            }
        })
    };
    c.bench_function("table/load_under_swaps", |b| {
        b.iter(|| black_box(cell.load_full().version))
    });
    stop.store(true, Relaxed);
    swapper.join().expect("swapper thread");
}

criterion_group!(benches, route_assign, rewrite, table_swaps);
criterion_main!(benches);
