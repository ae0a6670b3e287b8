//! A real PostgreSQL 16 server with pgvector for the tests, never a mock: the `pgserver` wheel
//! (which ships `initdb`, `pg_ctl`, `postgres` and `vector.so`) fetched with pip the way arvis
//! provisions ONNX Runtime, unpacked into a cache under target/, and started by each test binary
//! in a temporary directory on a Unix socket and a loopback TCP port. As root, the server runs
//! as `nobody` (PostgreSQL refuses to run as root). A watchdog stops it if the test process dies.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const WHEEL: &str = "pgserver==0.1.4";
/// The role every test server is initialised with (trust authentication on loopback).
pub const SUPERUSER: &str = "arvis";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The wheel's layout, kept: its programs find the libraries auditwheel bundled through an
/// rpath of `$ORIGIN/../../../pgserver.libs`.
const INSTALL: &str = "pgserver/pginstall";

/// `pgserver/pginstall/` of the wheel, unpacked once (atomically published) under target/.
pub fn install() -> &'static Path {
    static INSTALL_DIR: OnceLock<PathBuf> = OnceLock::new();
    INSTALL_DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pgserver-0.1.4");
        if !root.join(INSTALL).join("bin/postgres").is_file() {
            provision(&root);
        }
        if is_root() && !nobody_can_run(&root.join(INSTALL).join("bin/initdb")) {
            // A checkout where `nobody` cannot look (under /root): a world-readable copy.
            let copy = std::env::temp_dir().join("arvis-test-pgserver-0.1.4");
            if !nobody_can_run(&copy.join(INSTALL).join("bin/initdb")) {
                let staging = std::env::temp_dir().join(format!(
                    "arvis-test-pginstall-staging-{}",
                    std::process::id()
                ));
                let _ = std::fs::remove_dir_all(&staging);
                let ok = Command::new("cp")
                    .arg("-a")
                    .arg(&root)
                    .arg(&staging)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "copying the PostgreSQL install");
                super::chmod_r("a+rX", &staging);
                if std::fs::rename(&staging, &copy).is_err() {
                    let _ = std::fs::remove_dir_all(&staging);
                }
            }
            return copy.join(INSTALL);
        }
        root.join(INSTALL)
    })
}

/// Whether `nobody` can run `program` (with its libraries: `--version` loads them).
fn nobody_can_run(program: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn provision(root: &Path) {
    eprintln!("tests: provisioning PostgreSQL 16 + pgvector ({WHEEL}) with pip");
    let staging = root.with_extension(format!("staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).unwrap();
    let wheels = staging.join("wheel");
    // The way arvis fetches ONNX Runtime's wheel (ARVIS_PYTHON's pip).
    let ok = arvis::runtime::pip_download(&arvis::runtime::python(), &wheels, &[WHEEL])
        .expect("run pip")
        .success();
    assert!(ok, "pip download {WHEEL} failed");
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel).unwrap()).unwrap();
    let out = staging.join("out");
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let Some(rel) = entry.enclosed_name() else {
            continue;
        };
        if !rel.starts_with(INSTALL) && !rel.starts_with("pgserver.libs") {
            continue;
        }
        let dest = out.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            continue;
        }
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let mut f = std::fs::File::create(&dest).unwrap();
        std::io::copy(&mut entry, &mut f).unwrap();
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode & 0o777)).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(root);
    // Another test binary may have published it meanwhile: either copy is whole.
    if std::fs::rename(&out, root).is_err() {
        assert!(root.join(INSTALL).join("bin/postgres").is_file());
    }
    let _ = std::fs::remove_dir_all(&staging);
}

/// A command of an install, as the server's own user.
fn pg_command(install: &Path, bin: &str) -> Command {
    let path = install.join("bin").join(bin);
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// One running server, stopped when dropped.
pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
    install: PathBuf,
    /// A server's own copy of the install, when it has one.
    _install_copy: Option<tempfile::TempDir>,
    /// Settings beyond the ones every test server has (`-c name=value …`).
    extra: String,
}

impl PgServer {
    /// initdb into a temporary directory and start on 127.0.0.1 and a Unix socket there.
    pub fn start() -> PgServer {
        PgServer::start_from(install().to_path_buf(), None)
    }

    /// A server whose install lacks pgvector (its extension files removed from a copy), as a
    /// PostgreSQL without the extension installed is.
    pub fn start_without_pgvector() -> PgServer {
        let copy = tempfile::Builder::new()
            .prefix("arvis-pg-novector-")
            .tempdir()
            .unwrap();
        // The wheel's root (with pgserver.libs beside pgserver/): the rpath needs the layout.
        let root = install().parent().unwrap().parent().unwrap();
        let ok = Command::new("cp")
            .arg("-a")
            .arg(root.join("pgserver"))
            .arg(root.join("pgserver.libs"))
            .arg(copy.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "copying the PostgreSQL install");
        let install = copy.path().join(INSTALL);
        std::fs::remove_file(install.join("share/postgresql/extension/vector.control")).unwrap();
        std::fs::remove_file(install.join("lib/postgresql/vector.so")).unwrap();
        super::chmod_r("a+rX", copy.path());
        PgServer::start_from(install, Some(copy))
    }

    /// A server from the system's packages (Debian's `postgresql`, built with OpenSSL;
    /// `scripts/system-deps --tests` installs it) that accepts only encrypted connections, with
    /// a certificate for 127.0.0.1 signed by a CA of the test's own ([`PgServer::ca`]). It has
    /// no pgvector: the tests that use it are about getting a session, not a catalogue.
    pub fn start_tls() -> PgServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("postgres").is_file())
            .expect(
                "no PostgreSQL server from the system's packages under /usr/lib/postgresql: \
                 run scripts/system-deps --tests (it installs Debian's postgresql)",
            );
        let mut server = PgServer::init(bin.parent().unwrap().to_path_buf(), None);
        let d = server.dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("run openssl (scripts/system-deps --tests installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=arvis test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        if is_root() {
            for f in ["server.key", "server.crt"] {
                std::os::unix::fs::chown(d.join(f), Some(65534), Some(65534)).unwrap();
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        // Encrypted sessions only.
        std::fs::write(
            server.data().join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        server.extra = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            d.join("server.crt").display(),
            d.join("server.key").display()
        );
        server.start_again();
        server.watchdog();
        server
    }

    /// The CA that signed a [`PgServer::start_tls`] server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_from(install: PathBuf, copy: Option<tempfile::TempDir>) -> PgServer {
        let server = PgServer::init(install, copy);
        server.start_again();
        server.watchdog();
        server
    }

    /// initdb into a temporary directory; not started yet.
    fn init(install: PathBuf, copy: Option<tempfile::TempDir>) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("arvis-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        }
        let out = pg_command(&install, "initdb")
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PgServer {
            dir,
            port: super::free_port(),
            install,
            _install_copy: copy,
            extra: String::new(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// (Re)start the server on the same port and data.
    pub fn start_again(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=60{}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        let out = pg_command(&self.install, "pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-o", &opts, "-w", "-t", "30", "start"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Stop it now (as a crash would look to clients: immediate shutdown).
    pub fn stop(&self) {
        let _ = pg_command(&self.install, "pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// If this test process dies without dropping the server, stop it anyway (bounded: at most
    /// two hours).
    fn watchdog(&self) {
        let me = std::process::id();
        let ctl = self.install.join("bin/pg_ctl");
        let run_as = if is_root() {
            "setpriv --reuid=65534 --regid=65534 --clear-groups --"
        } else {
            ""
        };
        let script = format!(
            "n=0; while kill -0 {me} 2>/dev/null && [ $n -lt 14400 ]; do sleep 0.5; n=$((n+1)); done; \
             {run_as} '{}' -D '{}' -m immediate stop >/dev/null 2>&1; rm -rf '{}'",
            ctl.display(),
            self.data().display(),
            self.dir.path().display()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// A URL on the loopback TCP port for `user` (no password: trust) and catalogue `catalogue`.
    pub fn url(&self, catalogue: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@127.0.0.1:{}/postgres?catalogue={catalogue}",
            self.port
        )
    }

    /// The same server through its Unix socket.
    pub fn socket_url(&self, catalogue: &str) -> String {
        format!(
            "postgresql:///postgres?host={}&port={}&user={SUPERUSER}&catalogue={catalogue}",
            self.dir.path().display(),
            self.port
        )
    }

    /// A superuser connection, for setting things up (roles, grants) as an administrator would.
    pub fn admin(&self) -> postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match postgres::Config::new()
                .host("127.0.0.1")
                .port(self.port)
                .user(SUPERUSER)
                .dbname("postgres")
                .connect(postgres::NoTls)
            {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("connecting as admin: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Make `role` log in over TCP with its password (SCRAM) instead of trust, as a real
    /// server would ask; other roles keep trust.
    pub fn require_password(&self, role: &str) {
        let hba = self.data().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("host all {role} 127.0.0.1/32 scram-sha-256\n{old}"),
        )
        .unwrap();
        self.exec("SELECT pg_reload_conf()");
    }

    /// Run `sql` as the superuser.
    pub fn exec(&self, sql: &str) {
        self.admin().batch_execute(sql).unwrap();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server a test binary shares (each test uses its own catalogue). Stopped by the watchdog
/// when the test process exits.
pub fn shared_server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// A catalogue of its own on the shared server.
pub fn catalogue_url(name: &str) -> String {
    shared_server().url(name)
}
