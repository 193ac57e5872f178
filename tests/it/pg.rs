//! A PostgreSQL server of the test's own: `initdb` in a temporary directory
//! and `postgres` on a free loopback port, stopped (and its directory
//! removed) when dropped.
//!
//! Needs Debian's PostgreSQL server binaries (`/usr/lib/postgresql/*/bin`).
//! `.ci/run` installs them; on a machine without them a test running as root
//! installs them once with apt-get, as the README's test command must pass on
//! a fresh machine. Elsewhere the test is skipped with a note, unless `CI` is
//! set, where it fails: CI must run it.
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the
//! `postgres` user the package creates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    pub port: u16,
    /// Serving TLS with `server.crt` (signed by `ca.pem`) in `dir`.
    tls: bool,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The newest `/usr/lib/postgresql/N/bin` holding `initdb` and `postgres`.
fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ABGATE_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// Installs Debian's server once per test process when it is missing and we
/// may (root with apt-get); the answer is remembered.
fn ensure_bin() -> Option<PathBuf> {
    static TRIED: Mutex<Option<Option<PathBuf>>> = Mutex::new(None);
    let mut tried = TRIED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = tried.as_ref() {
        return found.clone();
    }
    let mut bin = find_bin();
    if bin.is_none() && is_root() && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("PostgreSQL server binaries missing: apt-get install postgresql");
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdin(Stdio::null())
            .status();
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "postgresql",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status();
        bin = find_bin();
    }
    *tried = Some(bin.clone());
    bin
}

/// As root, runs `program` as the `postgres` user.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it; the key is
/// private to its owner, as postgres demands.
fn write_certificates(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "abgate test database CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    let key_path = dir.join("server.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A CA nobody's certificate is signed by, as a PEM file in `dir`.
pub fn stranger_ca(dir: &Path) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("stranger-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl PgServer {
    /// A running server with the `abgate` superuser (trust auth on
    /// loopback), or `None` when the test must be skipped (see the module doc).
    pub fn start() -> Option<PgServer> {
        Self::start_with(false)
    }

    /// As [`PgServer::start`], serving TLS as well, with a certificate for
    /// 127.0.0.1 signed by a fresh CA ([`PgServer::ca_file`]).
    pub fn start_tls() -> Option<PgServer> {
        Self::start_with(true)
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn start_with(tls: bool) -> Option<PgServer> {
        let Some(bin) = ensure_bin() else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "PostgreSQL server binaries not found under /usr/lib/postgresql; \
                     apt-get install postgresql (.ci/run does)"
                );
            }
            eprintln!("skipped: PostgreSQL server binaries not found (apt-get install postgresql)");
            return None;
        };
        let dir = super::support::temp_state_dir().with_extension("pg");
        std::fs::create_dir_all(&dir).unwrap();
        if tls {
            write_certificates(&dir);
        }
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {} to postgres", dir.display());
        }
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "abgate", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PgServer {
            bin,
            dir,
            child: None,
            port: free_port(),
            tls,
        };
        pg.run();
        Some(pg)
    }

    /// Starts `postgres` on `self.port` and waits until it accepts queries.
    fn run(&mut self) {
        let data = self.dir.join("data");
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let mut tls = Vec::new();
        if self.tls {
            tls.extend([
                "-c".to_string(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", self.dir.join("server.crt").display()),
                "-c".into(),
                format!("ssl_key_file={}", self.dir.join("server.key").display()),
            ]);
        }
        let child = as_server_user(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                // A test server: a crash of the machine is not what is tested.
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=16MB",
            ])
            .args(&tls)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new, empty database and its URL.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://abgate@127.0.0.1:{}/{db}", self.port)
    }

    /// One query's rows, tab-separated, through psql.
    pub fn query(&self, db: &str, sql: &str) -> String {
        self.psql(db, sql)
    }

    /// Runs `sql` in `db` with psql (unaligned, tab-separated, tuples only)
    /// and returns what it printed; a failure fails the test.
    fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "abgate",
            ])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-qAtF", "\t", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Stops the server (fast shutdown: clients are disconnected, committed
    /// work is kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = as_server_user(&self.bin.join("pg_ctl"))
                .args(["stop", "-m", "fast", "-w", "-D"])
                .arg(self.dir.join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.run();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
