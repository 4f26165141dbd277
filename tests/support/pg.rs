//! A private PostgreSQL for a test: `initdb` in a temp dir, `postgres` on a
//! free loopback port with its own socket dir, `fsync=off`; stopped by PID.
//!
//! PostgreSQL refuses to run as root. When the tests run as root, `initdb`
//! runs through `runuser -u postgres`, and `postgres` itself is spawned with
//! the postgres user's uid and gid, so the PID we hold is the postmaster's
//! (a `runuser` wrapper would hold a different PID, and kill its child two
//! seconds after a signal).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A private PostgreSQL server.
pub struct PgServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    // The postgres user's (uid, gid) when running as root.
    user: Option<(u32, u32)>,
}

/// Where Debian keeps the server binaries when they are not on PATH.
fn pg_bin(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("{name} not found: scripts/test.sh installs postgresql"))
}

/// The postgres user's uid and gid, from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| (f[2].parse().ok(), f[3].parse().ok()))
                .and_then(|(u, g)| Some((u?, g?)))
        })
        .expect("a postgres user (the postgresql package makes it)")
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective uid.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self")) == 0
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let user = is_root().then(postgres_user);
        let data = dir.path().join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let mut initdb = if user.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin("initdb"));
            c
        } else {
            Command::new(pg_bin("initdb"))
        };
        let out = initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PgServer {
            child: None,
            port: 0,
            dir,
            user,
        };
        for _ in 0..5 {
            pg.port = free_port();
            if pg.spawn() {
                return pg;
            }
        }
        panic!("postgres did not start; log:\n{}", pg.log());
    }

    fn spawn(&mut self) -> bool {
        let data = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join(format!("pg-{}.log", self.port)))
            .expect("log file");
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(
                self.dir.path().join(format!("pg-{}.log", self.port)),
                Some(uid),
                Some(gid),
            );
        }
        let mut cmd = Command::new(pg_bin("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().expect("postgres runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // exited: most likely the port was taken
            }
            if postgres::Client::connect(&self.url_of("postgres"), postgres::NoTls).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn log(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().ends_with(".log") {
                all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        all
    }

    fn url_of(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?connect_timeout=5",
            self.port
        )
    }

    /// A new empty database, and its URL.
    pub fn database(&self, name: &str) -> String {
        let mut c = self.client("postgres");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url_of(name)
    }

    /// A client of database `db`.
    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url_of(db), postgres::NoTls).expect("connect to postgres")
    }

    /// Stops the server (fast shutdown: SIGINT), keeping its data.
    pub fn stop(&mut self) {
        self.signal_and_wait("-INT", Duration::from_secs(10));
    }

    /// Sends `signal` to the postmaster and waits up to `within` for it to
    /// exit, then kills it.
    fn signal_and_wait(&mut self, signal: &str, within: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again on the same port, with its data.
    pub fn restart(&mut self) {
        assert!(
            self.spawn(),
            "postgres did not restart; log:\n{}",
            self.log()
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Immediate shutdown: nothing here needs to survive.
        self.signal_and_wait("-QUIT", Duration::from_secs(5));
    }
}
