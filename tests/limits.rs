//! Limits against scalpers (SPEC §5 `[limits]`, code 4029): a token bucket
//! per uid on cart-add and per client IP on every route, answered on the
//! event loop with the connection kept; `X-Forwarded-For` only when
//! trusted; 0 = off; and the memory of the limits stays fixed under a
//! flood of distinct keys while an abusive key stays refused. Real server,
//! real Redis, real sockets (some bound to other loopback addresses).

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{buy_bytes, config, raw, Client, RedisServer, Seckill};

/// A server whose only goods is sold out: every cart-add that passes the
/// limits is answered 1001 from memory, connection kept.
fn server(user: u64, ip: u64, burst: u64, trust: bool) -> (RedisServer, Seckill) {
    let redis = RedisServer::with_e1(&[("g1", 0)]);
    let mut c = config(&redis);
    c.limits.per_user_per_s = user;
    c.limits.per_ip_per_s = ip;
    c.limits.burst = burst;
    c.limits.trust_forwarded_for = trust;
    let s = Seckill::start_ready(&c);
    (redis, s)
}

/// A client whose socket's local address is `from` (any 127.0.0.0/8 one
/// is loopback on Linux).
fn client_from(from: [u8; 4], to: SocketAddr) -> Client {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local = SocketAddr::from((from, 0));
    socket.bind(&local.into()).expect("bind a loopback address");
    socket.connect(&to.into()).expect("connect");
    Client::from_stream(TcpStream::from(socket))
}

fn assert_limited(r: &support::Response) {
    r.assert(429, 4029, "too many requests", "keep-alive");
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[test]
fn a_uid_over_its_rate_gets_4029_on_the_same_connection_and_others_are_unaffected() {
    let (_redis, s) = server(1, 0, 2, false);
    let mut c = s.client();
    for _ in 0..2 {
        c.buy("eager", "e1", "g1")
            .assert(200, 1001, "no stock", "keep-alive");
    }
    assert_limited(&c.buy("eager", "e1", "g1"));
    // The same connection goes on: another uid, and other routes.
    c.buy("calm", "e1", "g1")
        .assert(200, 1001, "no stock", "keep-alive");
    c.get("/event/list", None)
        .assert(200, 0, "ok", "keep-alive");
    // A new connection does not reset the uid's bucket.
    assert_limited(&s.client().buy("eager", "e1", "g1"));
    assert_eq!(s.metric("seckill_limited_total{key=\"user\"}"), 2.0);
    assert_eq!(s.metric("seckill_limited_total{key=\"ip\"}"), 0.0);
    assert_eq!(
        s.metric("seckill_responses_total{route=\"cart_add\",code=\"4029\"}"),
        2.0
    );
    // A token a second: the next attempt after a second passes.
    std::thread::sleep(Duration::from_millis(1100));
    c.buy("eager", "e1", "g1")
        .assert(200, 1001, "no stock", "keep-alive");
}

#[test]
fn a_client_ip_over_its_rate_gets_4029_on_every_route_and_other_ips_are_unaffected() {
    let (_redis, s) = server(0, 1, 3, false);
    let mut noisy = client_from([127, 0, 0, 2], s.addr);
    noisy
        .get("/event/info?event_id=e1", None)
        .assert(200, 0, "ok", "keep-alive");
    noisy
        .get("/event/list", None)
        .assert(200, 0, "ok", "keep-alive");
    noisy.send(&buy_bytes("u1", "e1", "g1", ""));
    noisy.read().assert(200, 1001, "no stock", "keep-alive");
    assert_limited(&noisy.get("/event/list", None));
    assert_limited(&noisy.get("/nope", None));
    noisy.send(&buy_bytes("u2", "e1", "g1", ""));
    assert_limited(&noisy.read());
    // The probes are never limited: a balancer's health checks come from
    // its own address, and a refused probe takes a healthy node out.
    for _ in 0..20 {
        noisy
            .get("/healthz", None)
            .assert(200, 0, "ok", "keep-alive");
        noisy
            .get("/readyz", None)
            .assert(200, 0, "ok", "keep-alive");
    }
    // Its other connections share the address's bucket; another address
    // has its own.
    assert_limited(&client_from([127, 0, 0, 2], s.addr).get("/event/list", None));
    let mut quiet = client_from([127, 0, 0, 3], s.addr);
    for _ in 0..3 {
        quiet
            .get("/event/list", None)
            .assert(200, 0, "ok", "keep-alive");
    }
    assert_eq!(s.metric("seckill_limited_total{key=\"ip\"}"), 4.0);
}

/// Requests `n` times from one socket, each with `X-Forwarded-For: xff`;
/// returns how many were 4029.
fn limited_of(c: &mut Client, n: usize, xff: &str) -> usize {
    (0..n)
        .filter(|_| {
            c.send(&raw(
                "GET",
                "/event/list",
                None,
                None,
                &format!("X-Forwarded-For: {xff}\r\n"),
            ));
            c.read().code() == 4029
        })
        .count()
}

#[test]
fn forwarded_for_names_the_client_only_when_trusted() {
    // Not trusted (the default): a client cannot pick its own key; all of
    // one peer's requests share its bucket, whatever the header says.
    let (_redis, s) = server(0, 1, 2, false);
    // Not from 127.0.0.1, which the readiness checks of the harness used.
    let mut c = client_from([127, 0, 0, 4], s.addr);
    let mut limited = 0;
    for i in 0..6 {
        limited += limited_of(&mut c, 1, &format!("10.0.0.{i}"));
    }
    assert_eq!(limited, 4, "the header was trusted");

    // Trusted (behind a balancer): the last address is the client's, so
    // each has its own bucket over one connection from the balancer.
    let (_redis, s) = server(0, 1, 2, true);
    let mut balancer = s.client();
    assert_eq!(limited_of(&mut balancer, 2, "6.6.6.6, 10.0.0.1"), 0);
    assert_eq!(limited_of(&mut balancer, 1, "10.0.0.1"), 1);
    assert_eq!(limited_of(&mut balancer, 2, "7.7.7.7, 10.0.0.2"), 0);
    assert_eq!(limited_of(&mut balancer, 1, "10.0.0.2"), 1);
}

#[test]
fn zero_turns_both_limits_off() {
    let (_redis, s) = server(0, 0, 1, false);
    let mut c = s.client();
    for _ in 0..200 {
        c.buy("eager", "e1", "g1")
            .assert(200, 1001, "no stock", "keep-alive");
    }
    let text = s.metrics();
    assert!(!text.contains("code=\"4029\""), "{text}");
    assert!(
        text.contains("seckill_limited_total{key=\"user\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("seckill_limited_total{key=\"ip\"} 0"),
        "{text}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `n` distinct uids `{prefix}{i}`, one cart-add each, pipelined over
/// `conns` connections 500 at a time; every answer must be 1001 (the
/// limit never refuses a uid's first attempt). Every 2 000 users, the
/// abuser tries once on its own connection; returns how often it passed.
fn flood(s: &Seckill, prefix: &str, n: usize, abuser: &mut Client) -> usize {
    let conns = 4;
    let mut clients: Vec<Client> = (0..conns).map(|_| s.client()).collect();
    let mut passed = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500 * conns) {
        for (k, part) in chunk.chunks(500).enumerate() {
            let bytes: Vec<u8> = part
                .iter()
                .flat_map(|i| buy_bytes(&format!("{prefix}{i}"), "e1", "g1", ""))
                .collect();
            clients[k].send(&bytes);
        }
        for (k, part) in chunk.chunks(500).enumerate() {
            for _ in part {
                let r = clients[k].read();
                assert_eq!(r.code(), 1001, "{r:?}");
            }
        }
        if chunk[0] % 2000 == 0 {
            abuser.send(&buy_bytes("abuser", "e1", "g1", ""));
            passed += usize::from(abuser.read().code() != 4029);
        }
    }
    passed
}

#[test]
fn a_flood_of_distinct_uids_keeps_memory_fixed_and_an_abuser_refused() {
    let (_redis, s) = server(1, 0, 1, false);
    let mut abuser = s.client();
    abuser.send(&buy_bytes("abuser", "e1", "g1", ""));
    assert_eq!(abuser.read().code(), 1001);
    let started = Instant::now();
    let before = rss_kib(s.pid());
    let passed_first = flood(&s, "a", 100_000, &mut abuser);
    let after_first = rss_kib(s.pid());
    let passed_second = flood(&s, "b", 100_000, &mut abuser);
    let after_second = rss_kib(s.pid());
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "RSS {before} KiB at start, {after_first} KiB after 100 000 distinct uids, {after_second} KiB after 100 000 more ({secs:.1} s); the abuser passed {} times",
        passed_first + passed_second
    );
    // The table was all touched by the first flood (4 MiB at most); the
    // second finds nothing new to allocate. A map that kept every uid would
    // grow by megabytes again.
    assert!(
        after_second.saturating_sub(after_first) < 2048,
        "memory grew by {} KiB in the second flood",
        after_second.saturating_sub(after_first)
    );
    assert!(
        after_first.saturating_sub(before) < 16 * 1024,
        "memory grew by {} KiB in the first flood",
        after_first.saturating_sub(before)
    );
    // One token a second, burst 1: the abuser passes at most once per
    // second of flood (plus one), never more, however many uids flood in.
    assert!(
        (passed_first + passed_second) as f64 <= secs + 1.0,
        "the abuser passed {} times in {secs:.1} s",
        passed_first + passed_second
    );
}
