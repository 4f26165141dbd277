//! A private haproxy in front of test nodes: the repository's
//! `deploy/haproxy.cfg` as shipped, with its `bind` line and its `server`
//! lines replaced by this test's; run in the foreground (`-db`) and stopped
//! by PID.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A running haproxy.
pub struct Haproxy {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// The shipped configuration with the balancer on `port` and `nodes` as
/// its servers (the `server` lines are the end of the file's last section,
/// the backend).
pub fn render(shipped: &str, port: u16, nodes: &[SocketAddr]) -> String {
    let mut out = String::new();
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("server ") {
            continue;
        }
        if t.starts_with("bind ") {
            out.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for (i, node) in nodes.iter().enumerate() {
        out.push_str(&format!("    server node{} {node}\n", i + 1));
    }
    out
}

impl Haproxy {
    /// Starts haproxy in front of `nodes`; returns once it accepts.
    pub fn start(nodes: &[SocketAddr]) -> Haproxy {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy.cfg"),
        )
        .expect("deploy/haproxy.cfg");
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("haproxy.cfg");
        for _ in 0..5 {
            let port = free_port();
            std::fs::write(&cfg, render(&shipped, port, nodes)).expect("write haproxy.cfg");
            let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
            let mut child = Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("haproxy is installed (scripts/test.sh installs it)");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: most likely the port was taken
                }
                if TcpStream::connect(addr).is_ok() {
                    return Haproxy { child, addr, dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("haproxy did not start; its log:\n{}", self_log(dir.path()));
    }

    /// What haproxy wrote (alerts and warnings).
    pub fn log(&self) -> String {
        self_log(self.dir.path())
    }
}

fn self_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
