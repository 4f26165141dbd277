//! Stage 8 of 8: `Code` + JSON `data` -> HTTP/1.1 response bytes.
//!
//! In: the code, the `data` JSON text (or none, written `null`), whether the
//! connection stays open, and any extra header (`Allow`; `Retry-After` goes
//! with the codes that carry it).
//! Out: bytes appended to the caller's buffer.
//! Invariants: `Content-Length` is always computed from the body actually
//! written; every response carries `Date`, `Content-Type` and an explicit
//! `Connection: keep-alive` or `Connection: close`.
//! Never: puts internal error text in a body: `msg` comes from `codes`.

use std::io::Write;

use crate::codes::Code;

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
const DATE_LEN: usize = 29;

/// The `Date` header value, formatted once per second into a fixed buffer,
/// with every fixed answer of that second pre-encoded (`Canned`). Nothing
/// allocates after the first second: the buffers are reused.
#[derive(Debug, Clone)]
pub struct DateCache {
    unix_s: u64,
    // INVARIANT: the IMF-fixdate of `unix_s`, 29 ASCII bytes.
    text: [u8; DATE_LEN],
    // INVARIANT: encoded with `text`.
    canned: Canned,
}

/// Every JSON answer without `data` or an extra header (1001 from memory,
/// 4001, 404, ...), encoded in full for one second (the `Date` is in the
/// bytes): the loop copies these rather than formatting them per request.
#[derive(Debug, Clone)]
pub struct Canned {
    // INVARIANT: bufs[2 * (code as usize) + keep_alive as usize] holds that
    // answer; `Code as usize` is its place in `Code::ALL` (codes.rs).
    bufs: Vec<Vec<u8>>,
}

impl Canned {
    fn new(date: &str) -> Self {
        let mut c = Canned {
            bufs: vec![Vec::with_capacity(256); 2 * Code::ALL.len()],
        };
        c.encode(date);
        c
    }

    fn encode(&mut self, date: &str) {
        for code in Code::ALL {
            for keep_alive in [false, true] {
                if let Some(buf) = self
                    .bufs
                    .get_mut(2 * code as usize + usize::from(keep_alive))
                {
                    buf.clear();
                    write_json(buf, code, None, keep_alive, date, Extra::None);
                }
            }
        }
    }

    /// The full response for `code` with no data and no extra header.
    pub(crate) fn get(&self, code: Code, keep_alive: bool) -> &[u8] {
        self.bufs
            .get(2 * code as usize + usize::from(keep_alive))
            .map_or(&[][..], Vec::as_slice)
    }
}

impl DateCache {
    /// A cache holding `unix_s`.
    pub fn new(unix_s: u64) -> Self {
        let text = format_date(unix_s);
        let canned = Canned::new(std::str::from_utf8(&text).unwrap_or(EPOCH_DATE));
        DateCache {
            unix_s,
            text,
            canned,
        }
    }

    /// The date text for `unix_s`, reformatted only when the second changed.
    pub fn get(&mut self, unix_s: u64) -> &str {
        self.stamp(unix_s).0
    }

    /// The date text and the fixed answers for `unix_s`, re-encoded only
    /// when the second changed.
    pub fn stamp(&mut self, unix_s: u64) -> (&str, &Canned) {
        if unix_s != self.unix_s {
            self.unix_s = unix_s;
            self.text = format_date(unix_s);
            // ASCII by construction; the fallback is never taken.
            self.canned
                .encode(std::str::from_utf8(&self.text).unwrap_or(EPOCH_DATE));
        }
        (
            std::str::from_utf8(&self.text).unwrap_or(EPOCH_DATE),
            &self.canned,
        )
    }
}

/// The `Date` text for `unix_s`, formatted on its own: for the rare answer
/// written where no `DateCache` is at hand (a `Hijacked` dropped unanswered).
pub(crate) fn date_text(unix_s: u64) -> String {
    String::from_utf8_lossy(&format_date(unix_s)).into_owned()
}

const EPOCH_DATE: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

fn format_date(unix_s: u64) -> [u8; DATE_LEN] {
    let date =
        httpdate::HttpDate::from(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_s));
    let mut text = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    // Years past 9999 do not fit; they keep the epoch text rather than panic.
    let _ = write!(&mut text[..], "{date}");
    text
}

/// A header beyond the fixed ones.
#[derive(Debug, Clone, Copy)]
pub enum Extra {
    /// None.
    None,
    /// `Allow: <methods>` (405).
    Allow(&'static str),
}

/// Appends a JSON response `{"code":..,"msg":..,"data":..}` to `out`.
pub fn write_json(
    out: &mut Vec<u8>,
    code: Code,
    data: Option<&str>,
    keep_alive: bool,
    date: &str,
    extra: Extra,
) {
    let (status, reason) = code.status();
    let number = code.number();
    let msg = code.msg();
    let data = data.unwrap_or("null");
    let body_len = r#"{"code":,"msg":"","data":}"#.len() + digits(number) + msg.len() + data.len();
    write_head(
        out,
        status,
        reason,
        "application/json",
        body_len,
        keep_alive,
        date,
        extra,
        code.retry_after(),
    );
    // Writing into a Vec cannot fail.
    let _ = write!(out, r#"{{"code":{number},"msg":"{msg}","data":{data}}}"#);
}

/// Appends a response with any body (`/metrics`).
pub(crate) fn write_raw(
    out: &mut Vec<u8>,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    date: &str,
) {
    write_head(
        out,
        200,
        "OK",
        content_type,
        body.len(),
        keep_alive,
        date,
        Extra::None,
        false,
    );
    out.extend_from_slice(body);
}

#[allow(clippy::too_many_arguments)]
fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    content_type: &str,
    body_len: usize,
    keep_alive: bool,
    date: &str,
    extra: Extra,
    retry_after: bool,
) {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nServer: seckill\r\nDate: {date}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\nConnection: {connection}\r\n"
    );
    match extra {
        Extra::None => {}
        Extra::Allow(methods) => {
            let _ = write!(out, "Allow: {methods}\r\n");
        }
    }
    if retry_after {
        out.extend_from_slice(b"Retry-After: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn digits(n: u16) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(code: Code, data: Option<&str>, keep_alive: bool, extra: Extra) -> String {
        let mut out = Vec::new();
        write_json(
            &mut out,
            code,
            data,
            keep_alive,
            "Sun, 22 Nov 2026 03:00:00 GMT",
            extra,
        );
        String::from_utf8(out).unwrap()
    }

    fn body_and_length(resp: &str) -> (String, usize) {
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        (body.to_string(), len)
    }

    #[test]
    fn content_length_matches_the_body_for_every_code() {
        for code in Code::ALL {
            for data in [None, Some(r#"{"order_id":"1-0","stock_left":7}"#)] {
                let resp = text(code, data, true, Extra::None);
                let (body, len) = body_and_length(&resp);
                assert_eq!(body.len(), len, "{resp}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["code"], code.number());
                assert_eq!(v["msg"], code.msg());
            }
        }
    }

    #[test]
    fn no_stock_response_is_exact() {
        let resp = text(Code::NoStock, None, true, Extra::None);
        assert_eq!(
            resp,
            "HTTP/1.1 200 OK\r\nServer: seckill\r\nDate: Sun, 22 Nov 2026 03:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 42\r\nConnection: keep-alive\r\n\r\n{\"code\":1001,\"msg\":\"no stock\",\"data\":null}"
        );
    }

    #[test]
    fn extras_and_close_are_written() {
        let resp = text(Code::Busy, None, false, Extra::None);
        assert!(resp.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(resp.contains("\r\nRetry-After: 1\r\n"));
        assert!(resp.contains("\r\nConnection: close\r\n"));
        let resp = text(Code::MethodNotAllowed, None, true, Extra::Allow("GET"));
        assert!(resp.contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn canned_answers_equal_encoded_ones_and_follow_the_date() {
        let mut d = DateCache::new(1_795_000_000);
        for code in Code::ALL {
            for keep in [false, true] {
                let mut fresh = Vec::new();
                write_json(
                    &mut fresh,
                    code,
                    None,
                    keep,
                    "Wed, 18 Nov 2026 11:06:40 GMT",
                    Extra::None,
                );
                assert_eq!(
                    d.stamp(1_795_000_000).1.get(code, keep),
                    &fresh[..],
                    "{code:?} {keep}"
                );
            }
        }
        let next =
            String::from_utf8(d.stamp(1_795_000_001).1.get(Code::NoStock, true).to_vec()).unwrap();
        assert!(
            next.contains("Date: Wed, 18 Nov 2026 11:06:41 GMT\r\n"),
            "{next}"
        );
    }

    #[test]
    fn date_cache_formats_imf_fixdate() {
        let mut d = DateCache::new(0);
        assert_eq!(d.get(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(d.get(1_795_000_000), "Wed, 18 Nov 2026 11:06:40 GMT");
    }
}
