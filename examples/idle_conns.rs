//! Memory per idle keep-alive connection, as the server's RSS sees it.
//!
//! Opens `--conns` connections to `--addr`, makes one request on each (so
//! every connection has been served and is now idle, kept alive), then
//! reads the server's `VmRSS` from `/proc/<--pid>/status` and prints the
//! growth per connection. `scripts/bench.sh` runs it at 10 000 connections.
//!
//! `cargo run --release --example idle_conns -- --addr 127.0.0.1:8080 --pid 1234 --conns 10000`

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use seckill::client;

/// Memory per idle keep-alive connection.
#[derive(clap::Parser)]
struct Args {
    /// The server's public address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The server's process id (for /proc/PID/status).
    #[arg(long)]
    pid: u32,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
}

fn rss_kib(pid: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("bad VmRSS line")?
        .parse()?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args { addr, pid, conns } = clap::Parser::parse();
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(conns);
    let mut buf = Vec::new();
    for _ in 0..conns {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
        buf.clear();
        let answer = client::read(&mut s, &mut buf).map_err(|e| format!("/healthz: {e:?}"))?;
        if answer.closes() {
            return Err("server closed a keep-alive connection".into());
        }
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / conns as f64;
    println!(
        "IDLE conns={conns} rss_before_kib={before} rss_after_kib={after} bytes_per_conn={per:.0}"
    );
    drop(held);
    Ok(())
}
