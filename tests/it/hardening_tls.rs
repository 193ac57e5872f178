//! TLS termination and https upstreams, with certificates made by rcgen at test
//! time (no private key is ever committed).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(5);

/// A CA and a leaf for 127.0.0.1/localhost it signed, written as PEM files into
/// a fresh temporary directory (removed on drop).
struct Pki {
    dir: PathBuf,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "abgate-tls-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("abgate test CA {tag}"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca_der: ca.der().clone(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn listener_yaml(&self) -> String {
        format!(
            "tls: {{ cert: \"{}\", key: \"{}\" }}",
            self.path("cert.pem"),
            self.path("key.pem")
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type TlsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// A client that trusts only `ca` and speaks only `version` (chosen via ALPN).
fn tls_client(ca: &CertificateDer<'static>, version: Version) -> TlsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only();
    let (conn, h2) = if version == Version::HTTP_2 {
        (b.enable_http2().build(), true)
    } else {
        (b.enable_http1().build(), false)
    };
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .pool_max_idle_per_host(0)
        .build(conn)
}

async fn tls_get(c: &TlsClient, url: &str) -> Result<(Version, u16, Bytes), String> {
    let resp = c
        .request(Request::get(url).body(Empty::new()).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (v, st) = (resp.version(), resp.status().as_u16());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((v, st, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_negotiates_h2_and_http11_by_alpn() {
    let pki = Pki::new("alpn");
    let rec = RecordingBackend::start().await;
    let s = start_abgate(&default_backend_config(&rec.url(), &pki.listener_yaml())).await;
    let url = format!("https://127.0.0.1:{}/tls", s.data_addr.port());
    let (v, st, body) = tls_get(&tls_client(&pki.ca_der, Version::HTTP_2), &url)
        .await
        .unwrap();
    assert_eq!((v, st, &body[..]), (Version::HTTP_2, 200, &b"rec"[..]));
    let (v, st, _) = tls_get(&tls_client(&pki.ca_der, Version::HTTP_11), &url)
        .await
        .unwrap();
    assert_eq!((v, st), (Version::HTTP_11, 200));
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.headers["x-forwarded-proto"], "https");
    }
    // Plain HTTP on the TLS port is not served.
    let resp = raw(
        s.data_addr,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(!resp.contains("200"), "{resp}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_a_client_hello_is_closed_after_the_handshake_timeout() {
    let pki = Pki::new("silent");
    let rec = RecordingBackend::start().await;
    let extra = format!(
        "{}\ntimeouts: {{ tls_handshake: 300ms }}",
        pki.listener_yaml()
    );
    let s = start_abgate(&default_backend_config(&rec.url(), &extra)).await;
    let started = Instant::now();
    let mut conn = TcpStream::connect(s.data_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(LIMIT, conn.read(&mut buf))
        .await
        .expect("closed within the limit");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    expect_rejected(s.admin_addr, "tls-handshake-timeout", 1.0).await;
    let url = format!("https://127.0.0.1:{}/after", s.data_addr.port());
    let (_, st, _) = tls_get(&tls_client(&pki.ca_der, Version::HTTP_11), &url)
        .await
        .unwrap();
    assert_eq!(st, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_takes_effect_for_new_connections() {
    let old = Pki::new("old");
    let new = Pki::new("new");
    let rec = RecordingBackend::start().await;
    let s = start_abgate(&default_backend_config(&rec.url(), &old.listener_yaml())).await;
    let url = format!("https://127.0.0.1:{}/r", s.data_addr.port());
    assert!(tls_get(&tls_client(&old.ca_der, Version::HTTP_11), &url)
        .await
        .is_ok());
    assert!(tls_get(&tls_client(&new.ca_der, Version::HTTP_11), &url)
        .await
        .is_err());
    // Re-applying a config re-reads the certificate it names.
    let reloaded = format!(
        "listen: 127.0.0.1:0\n{}",
        default_backend_config(&rec.url(), &new.listener_yaml())
    );
    put_config(s.admin_addr, None, &reloaded).await;
    assert!(tls_get(&tls_client(&new.ca_der, Version::HTTP_11), &url)
        .await
        .is_ok());
    assert!(tls_get(&tls_client(&old.ca_der, Version::HTTP_11), &url)
        .await
        .is_err());
    s.shutdown().await;
}

#[test]
fn unreadable_tls_files_are_config_errors_with_lines() {
    let errs = abgate::config::parse(
        "backends:\n  b: { url: \"https://127.0.0.1:1\", ca_file: /nonexistent/ca.pem }\ntls:\n  cert: /nonexistent/cert.pem\n  key: /nonexistent/key.pem\n",
    )
    .unwrap_err()
    .to_string();
    assert!(errs.contains("backends.b.ca_file"), "{errs}");
    assert!(errs.contains("tls.cert"), "{errs}");
    assert!(errs.contains("tls.key"), "{errs}");
    assert!(errs.contains("(line 4)"), "{errs}");
}

/// An https backend whose certificate is signed by `pki`'s CA; with
/// `require_client_cert` it also demands a client certificate from that CA.
async fn https_backend(
    pki: &Pki,
    require_client_cert: bool,
) -> (String, tokio::task::JoinHandle<()>) {
    let cfg = if require_client_cert {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                abgate::config::pem::load_certs(Path::new(&pki.path("cert.pem"))).unwrap(),
                abgate::config::pem::load_key(Path::new(&pki.path("key.pem"))).unwrap(),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg
    } else {
        abgate::proxy::tls::server_config(&abgate::config::ListenerTls {
            cert: Path::new(&pki.path("cert.pem")).to_path_buf(),
            key: Path::new(&pki.path("key.pem")).to_path_buf(),
        })
        .unwrap()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("secure"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (format!("https://127.0.0.1:{}", addr.port()), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_verify_the_backend_certificate() {
    let pki = Pki::new("upstream");
    let (url, task) = https_backend(&pki, false).await;
    let yaml = format!(
        r#"
backends:
  untrusted: {{ url: "{url}" }}
  trusted: {{ url: "{url}", ca_file: "{ca}" }}
  trusted_h2: {{ url: "{url}", ca_file: "{ca}", protocol: http2 }}
experiments:
  - name: u
    match: {{ path_prefix: /untrusted }}
    arms: [ {{ name: u, backend: untrusted, weight: 100 }} ]
  - name: t
    match: {{ path_prefix: /trusted }}
    arms: [ {{ name: t, backend: trusted, weight: 100 }} ]
  - name: h
    match: {{ path_prefix: /h2 }}
    arms: [ {{ name: h, backend: trusted_h2, weight: 100 }} ]
"#,
        ca = pki.path("ca.pem")
    );
    let s = start_abgate(&yaml).await;
    let c = client();
    let a = get(&c, &format!("http://{}/untrusted", s.data_addr), &[]).await;
    assert_eq!(a.status, 502, "{:?}", a.body);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let a = get(&c, &format!("http://{}/trusted", s.data_addr), &[]).await;
    assert_eq!((a.status, &a.body[..]), (200, &b"secure"[..]));
    let a = get(&c, &format!("http://{}/h2", s.data_addr), &[]).await;
    assert_eq!((a.status, &a.body[..]), (200, &b"secure"[..]));
    task.abort();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_present_a_client_certificate_when_configured() {
    let pki = Pki::new("mtls");
    let (url, task) = https_backend(&pki, true).await;
    let yaml = format!(
        r#"
backends:
  anonymous: {{ url: "{url}", ca_file: "{ca}" }}
  identified: {{ url: "{url}", ca_file: "{ca}", client_cert: "{cert}", client_key: "{key}" }}
experiments:
  - name: a
    match: {{ path_prefix: /anonymous }}
    arms: [ {{ name: a, backend: anonymous, weight: 100 }} ]
  - name: i
    match: {{ path_prefix: /identified }}
    arms: [ {{ name: i, backend: identified, weight: 100 }} ]
"#,
        ca = pki.path("ca.pem"),
        cert = pki.path("cert.pem"),
        key = pki.path("key.pem"),
    );
    let s = start_abgate(&yaml).await;
    let c = client();
    let a = get(&c, &format!("http://{}/anonymous", s.data_addr), &[]).await;
    assert_eq!(a.status, 502, "{:?}", a.body);
    let a = get(&c, &format!("http://{}/identified", s.data_addr), &[]).await;
    assert_eq!((a.status, &a.body[..]), (200, &b"secure"[..]));
    task.abort();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_put_reloads_the_listener_certificate() {
    let old = Pki::new("put-old");
    let new = Pki::new("put-new");
    let rec = RecordingBackend::start().await;
    let token = "t0ken";
    let s = start_abgate_with(
        &default_backend_config(&rec.url(), &old.listener_yaml()),
        Some(token),
    )
    .await;
    let url = format!("https://127.0.0.1:{}/r", s.data_addr.port());
    assert!(tls_get(&tls_client(&old.ca_der, Version::HTTP_11), &url)
        .await
        .is_ok());
    let put = admin_call(
        "PUT",
        &format!("http://{}/v1/config", s.admin_addr),
        Some(token),
        &[("if-match", "\"1\"")],
        &default_backend_config(&rec.url(), &new.listener_yaml()),
    )
    .await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert!(tls_get(&tls_client(&new.ca_der, Version::HTTP_11), &url)
        .await
        .is_ok());
    assert!(tls_get(&tls_client(&old.ca_der, Version::HTTP_11), &url)
        .await
        .is_err());
    s.shutdown().await;
}
