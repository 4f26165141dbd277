//! Beside the path: limits against scalpers (SPEC §5 `[limits]`, code 4029).
//!
//! Two limits, each a token bucket per key with `burst` tokens refilled at
//! its rate: cart-add attempts per uid (`per_user_per_s`, checked once the
//! token is verified) and requests per client IP on every public route
//! (`per_ip_per_s`, checked first). 0 turns a limit off. A refused request
//! is answered 4029 (HTTP 429, `Retry-After: 1`) on the event loop, the
//! connection kept, and counted in `seckill_limited_total{key=...}`.
//!
//! The client IP is the socket's peer; behind a load balancer that is the
//! balancer, so with `trust_forwarded_for = true` it is the last address
//! of `X-Forwarded-For` (the one the balancer appended), when there is one
//! that parses. Off by default: a client could otherwise pick its own key.
//! An IPv6 client is keyed by its /64 (the block one subscriber gets), an
//! IPv4-mapped address by its IPv4. The probes (`/healthz`, `/readyz`) are
//! not limited: a balancer's checks come from its own address.
//!
//! Memory: one `Table` per limit for the whole node, split into `SHARDS`
//! shards, each behind its own lock, `CAPACITY` slots in all, allocated at
//! start. One table per node rather than one per loop thread, so a client
//! whose connections land on different loops still gets the node's rate,
//! not the rate times the threads; a key's shard is picked by its hash, so
//! two loops contend only for keys of one shard. Keys are hashed with a
//! per-process secret key (SipHash), so nobody can aim many keys at one
//! set. What a full table forgets, and why a flood cannot use that, is
//! `table`'s.
//! Never: allocates when checking, or calls Redis.

mod table;

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use table::{Table, Verdict};

/// Slots per limit, across all shards: 2^17 of 32 bytes, 4 MiB a limit.
pub(crate) const CAPACITY: usize = 1 << 17;

/// Shards per limit.
const SHARDS: usize = 64;

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// `per_user_per_s`.
    User,
    /// `per_ip_per_s`.
    Ip,
}

/// One limit: its shards and the hasher that spreads keys over them.
#[derive(Debug)]
struct Limit {
    shards: Box<[Mutex<Table>]>,
}

impl Limit {
    fn new(per_s: u64, burst: u64) -> Option<Limit> {
        (per_s > 0).then(|| Limit {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Table::new(CAPACITY / SHARDS, per_s, burst)))
                .collect(),
        })
    }

    fn take(&self, hash: u64, now_ms: u64) -> Verdict {
        // High bits pick the shard, low bits the set inside it.
        let shard = (hash >> 58) as usize % SHARDS;
        self.shards[shard].lock().take(hash, now_ms)
    }
}

/// Both limits of a node; shared by every event loop.
#[derive(Debug)]
pub struct Limiter {
    user: Option<Limit>,
    ip: Option<Limit>,
    trust_forwarded_for: bool,
    hasher: std::collections::hash_map::RandomState,
    started: Instant,
    metrics: Metrics,
}

impl Limiter {
    /// The limits `config` turns on (none: nothing is allocated).
    pub fn new(config: &LimitsConfig, metrics: Metrics) -> Self {
        Limiter {
            user: Limit::new(config.per_user_per_s, config.burst),
            ip: Limit::new(config.per_ip_per_s, config.burst),
            trust_forwarded_for: config.trust_forwarded_for,
            hasher: std::collections::hash_map::RandomState::new(),
            started: Instant::now(),
            metrics,
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    fn check(
        &self,
        limit: &Option<Limit>,
        which: Limited,
        hash: u64,
        now: Instant,
    ) -> Result<(), Limited> {
        let Some(limit) = limit else {
            return Ok(());
        };
        match limit.take(hash, self.now_ms(now)) {
            Verdict::Allowed => Ok(()),
            Verdict::Overflow => {
                self.metrics.limit_overflow(which);
                Ok(())
            }
            Verdict::Refused => {
                self.metrics.limited(which);
                Err(which)
            }
        }
    }

    /// One cart-add attempt of `uid`.
    pub(crate) fn user(&self, uid: &str, now: Instant) -> Result<(), Limited> {
        if self.user.is_none() {
            return Ok(());
        }
        let hash = self.hasher.hash_one(uid);
        self.check(&self.user, Limited::User, hash, now)
    }

    /// One request from `peer`, or from the address its `forwarded_for`
    /// header names when that is trusted.
    pub(crate) fn ip(
        &self,
        peer: IpAddr,
        forwarded_for: Option<&[u8]>,
        now: Instant,
    ) -> Result<(), Limited> {
        if self.ip.is_none() {
            return Ok(());
        }
        let ip = match forwarded_for {
            Some(header) if self.trust_forwarded_for => last_forwarded(header).unwrap_or(peer),
            _ => peer,
        };
        let hash = self.hasher.hash_one(client_key(ip));
        self.check(&self.ip, Limited::Ip, hash, now)
    }
}

/// The key of a client address: an IPv4 address (also written as
/// IPv4-mapped IPv6) is itself; an IPv6 address is its /64, the block one
/// subscriber gets, so rotating addresses inside it buys no new burst.
fn client_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        // Bit 40 set: never the low half (1) of an IPv6 key.
        IpAddr::V4(v4) => (1 << 40) | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64 << 64) | 1,
    }
}

/// The last address of an `X-Forwarded-For` value (`client, proxy1, ...`),
/// if it parses as an IP address; no allocation.
fn last_forwarded(header: &[u8]) -> Option<IpAddr> {
    let last = header.rsplit(|&b| b == b',').next()?;
    std::str::from_utf8(last).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(user: u64, ip: u64, trust: bool) -> Limiter {
        let config = LimitsConfig {
            per_user_per_s: user,
            per_ip_per_s: ip,
            burst: 2,
            trust_forwarded_for: trust,
        };
        Limiter::new(&config, Metrics::default())
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let l = limiter(0, 0, false);
        let now = Instant::now();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            assert_eq!(l.user("u", now), Ok(()));
            assert_eq!(l.ip(peer, None, now), Ok(()));
        }
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let l = limiter(1, 1, false);
        let now = l.started;
        assert_eq!(l.user("u1", now), Ok(()));
        assert_eq!(l.user("u1", now), Ok(()));
        assert_eq!(l.user("u1", now), Err(Limited::User));
        assert_eq!(l.user("u2", now), Ok(()), "another uid");
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(l.ip(a, None, now), Ok(()));
        assert_eq!(l.ip(a, None, now), Ok(()));
        assert_eq!(l.ip(a, None, now), Err(Limited::Ip));
        assert_eq!(l.ip(b, None, now), Ok(()), "another address");
        let later = now + std::time::Duration::from_secs(1);
        assert_eq!(l.user("u1", later), Ok(()), "a token a second");
    }

    #[test]
    fn forwarded_for_counts_only_when_trusted() {
        let balancer: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        // Untrusted: the header is ignored; every request is the peer's.
        let l = limiter(0, 1, false);
        assert_eq!(l.ip(balancer, Some(b"1.1.1.1"), now), Ok(()));
        assert_eq!(l.ip(balancer, Some(b"2.2.2.2"), now), Ok(()));
        assert_eq!(l.ip(balancer, Some(b"3.3.3.3"), now), Err(Limited::Ip));
        // Trusted: the last address is the client; a header that does not
        // parse counts as the peer.
        let l = limiter(0, 1, true);
        for _ in 0..2 {
            assert_eq!(l.ip(balancer, Some(b"9.9.9.9, 1.1.1.1"), now), Ok(()));
        }
        assert_eq!(
            l.ip(balancer, Some(b"8.8.8.8,1.1.1.1"), now),
            Err(Limited::Ip)
        );
        assert_eq!(l.ip(balancer, Some(b" 2001:db8::1 "), now), Ok(()));
        assert_eq!(l.ip(balancer, Some(b"junk"), now), Ok(()));
        assert_eq!(l.ip(balancer, None, now), Ok(()));
        assert_eq!(l.ip(balancer, Some(b""), now), Err(Limited::Ip));
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_the_ipv4() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        // No IPv6 /64 meets an IPv4 address.
        assert_ne!(key("::"), key("0.0.0.0"));
        assert_ne!(key("::"), key("0.0.0.1"));
    }

    #[test]
    fn last_forwarded_reads_the_last_address() {
        assert_eq!(last_forwarded(b"1.2.3.4"), "1.2.3.4".parse().ok());
        assert_eq!(last_forwarded(b"5.5.5.5, 1.2.3.4"), "1.2.3.4".parse().ok());
        assert_eq!(last_forwarded(b"1.2.3.4,"), None);
        assert_eq!(last_forwarded(b"\xff"), None);
    }
}
