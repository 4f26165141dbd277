//! Stage 2 of 8: bytes -> `Partial` | `Complete(Request)` | `HttpError`.
//!
//! In: the connection's read buffer, from its first unconsumed byte.
//! Out: a `Request` borrowing from that buffer and the count of bytes it
//! used, so pipelined requests are parsed one after the other in order.
//! Invariants (strict by default, as httparse's own `ParserConfig` is):
//! - a head longer than `max_header_bytes`, or more than `MAX_HEADERS`
//!   headers, is `HeadTooLarge` (431) even before it is complete;
//! - `Content-Length` is ASCII digits with a checked parse; repeated values
//!   must agree; over `max_body_bytes` is `BodyTooLarge` (413) as soon as the
//!   head is read, before any body byte is buffered;
//! - `Transfer-Encoding` of any kind is refused (`Malformed`, 4000 and close):
//!   guessing where a chunked body ends is how request smuggling starts.
//!
//! Never: allocates, panics on input, or decides anything about routes.

use crate::http::parse::HttpError::{BodyTooLarge, HeadTooLarge, Malformed};

/// Headers read at most; more is `HeadTooLarge`. A caller-sized array, as
/// `httparse::Request::new` asks, so a flood of headers costs nothing.
pub(crate) const MAX_HEADERS: usize = 48;

/// Limits from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_header_bytes`.
    pub max_header_bytes: usize,
    /// `max_body_bytes`.
    pub max_body_bytes: usize,
}

/// The methods the routes know; anything else is `Other` (405 or 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// GET
    Get,
    /// PUT
    Put,
    /// POST
    Post,
    /// DELETE
    Delete,
    /// Any other token.
    Other,
}

/// One complete request, borrowed from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'b> {
    /// The method.
    pub(crate) method: Method,
    /// The path, without the query.
    pub(crate) path: &'b str,
    /// The query string after `?`, or "".
    pub(crate) query: &'b str,
    /// `HTTP/1.0` (else 1.1).
    pub(crate) http10: bool,
    /// Whether the connection stays open after the answer.
    pub(crate) keep_alive: bool,
    /// The `Authorization` header's value, if any.
    pub(crate) authorization: Option<&'b [u8]>,
    /// The last `X-Forwarded-For` header's value, if any (read only when
    /// `limits.trust_forwarded_for` is on).
    pub(crate) forwarded_for: Option<&'b [u8]>,
    /// The connection's peer address: not in the bytes; the event loop
    /// fills it in (unspecified until then).
    pub(crate) peer: std::net::IpAddr,
    /// The body (`Content-Length` bytes).
    pub(crate) body: &'b [u8],
}

/// What the buffer holds so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'b> {
    /// Not a whole request yet: read more.
    Partial,
    /// A whole request, which used `len` bytes of the buffer.
    Complete {
        /// The request.
        request: Request<'b>,
        /// Bytes consumed: head plus body.
        len: usize,
    },
}

/// Why the bytes are not a request we serve. Each maps to one `Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.x, bad syntax, bad `Content-Length`, `Transfer-Encoding`.
    Malformed,
    /// Head over `max_header_bytes`, or too many headers.
    HeadTooLarge,
    /// `Content-Length` over `max_body_bytes`.
    BodyTooLarge,
}

/// Parses one request from the front of `buf`.
pub fn parse<'b>(buf: &'b [u8], limits: &Limits) -> Result<Parsed<'b>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(HeadTooLarge);
            }
            return Ok(Parsed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadTooLarge),
        Err(_) => return Err(Malformed),
    };
    if head_len > limits.max_header_bytes {
        return Err(HeadTooLarge);
    }
    // httparse only reports Complete with all three present; a missing one is
    // treated as malformed rather than trusted.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Malformed);
    };
    let http10 = version == 0;

    let mut content_length: Option<usize> = None;
    let mut authorization = None;
    let mut forwarded_for = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(Malformed);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Malformed);
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Err(Malformed);
            }
            authorization = Some(h.value);
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            // Several headers are one list: its last address is in the last.
            forwarded_for = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body_bytes {
        return Err(BodyTooLarge);
    }
    let Some(body) = buf.get(head_len..head_len + body_len) else {
        return Ok(Parsed::Partial);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let keep_alive = if http10 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    Ok(Parsed::Complete {
        request: Request {
            method: match method {
                "GET" => Method::Get,
                "PUT" => Method::Put,
                "POST" => Method::Post,
                "DELETE" => Method::Delete,
                _ => Method::Other,
            },
            path,
            query,
            http10,
            keep_alive,
            authorization,
            forwarded_for,
            peer: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            body,
        },
        len: head_len + body_len,
    })
}

/// ASCII digits only (no sign, no spaces inside, no list), checked against
/// overflow. Surrounding whitespace was already trimmed by httparse.
fn parse_content_length(value: &[u8]) -> Result<usize, HttpError> {
    if value.is_empty() || value.len() > 19 {
        return Err(Malformed);
    }
    let mut n: usize = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return Err(Malformed);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(b - b'0')))
            .ok_or(Malformed)?;
    }
    Ok(n)
}

/// The value of `name` in a query string `a=1&b=2` (no percent-decoding: the
/// ids it carries allow only `[A-Za-z0-9_-]`, so an encoded id is invalid).
pub(crate) fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 256,
        max_body_bytes: 32,
    };

    fn outcome(bytes: &[u8]) -> String {
        match parse(bytes, &LIMITS) {
            Ok(Parsed::Partial) => "partial".into(),
            Ok(Parsed::Complete { request, len }) => format!(
                "{:?} {} ?{} 1.{} ka={} auth={} body={} len={len}",
                request.method,
                request.path,
                request.query,
                if request.http10 { 0 } else { 1 },
                request.keep_alive,
                request.authorization.is_some(),
                String::from_utf8_lossy(request.body),
            ),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn table_of_inputs_and_outcomes() {
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
        let many_headers = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        let cases: Vec<(&[u8], &str)> = vec![
            (
                b"GET /healthz HTTP/1.1\r\n\r\n",
                "Get /healthz ? 1.1 ka=true auth=false body= len=25",
            ),
            (
                b"GET /a?x=1&y=2 HTTP/1.1\r\n\r\n",
                "Get /a ?x=1&y=2 1.1 ka=true auth=false body= len=27",
            ),
            (
                b"GET / HTTP/1.0\r\n\r\n",
                "Get / ? 1.0 ka=false auth=false body= len=18",
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                "Get / ? 1.0 ka=true auth=false body= len=42",
            ),
            (
                b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
                "Get / ? 1.1 ka=false auth=false body= len=37",
            ),
            (
                b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n",
                "Get / ? 1.1 ka=false auth=false body= len=46",
            ),
            (
                b"PUT /c HTTP/1.1\r\nContent-Length: 2\r\nAuthorization: x\r\n\r\n{}",
                "Put /c ? 1.1 ka=true auth=true body={} len=58",
            ),
            (
                b"POST /c HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}",
                "Post /c ? 1.1 ka=true auth=false body={} len=60",
            ),
            (
                b"DELETE /x HTTP/1.1\r\n\r\n",
                "Delete /x ? 1.1 ka=true auth=false body= len=22",
            ),
            (
                b"BREW /x HTTP/1.1\r\n\r\n",
                "Other /x ? 1.1 ka=true auth=false body= len=20",
            ),
            (b"PUT /c HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}", "partial"),
            (b"GET / HTTP/1.1\r\n", "partial"),
            (b"", "partial"),
            (
                b"PUT /c HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
                "Malformed",
            ),
            (
                b"PUT /c HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                "Malformed",
            ),
            (
                b"PUT /c HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
                "Malformed",
            ),
            (
                b"PUT /c HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
                "Malformed",
            ),
            (
                b"PUT /c HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
                "Malformed",
            ),
            (
                b"PUT /c HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
                "Malformed",
            ),
            (b"PUT /c HTTP/1.1\r\nContent-Length: \r\n\r\n", "Malformed"),
            (
                b"PUT /c HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                "Malformed",
            ),
            (
                b"PUT /c HTTP/1.1\r\nContent-Length: 33\r\n\r\n",
                "BodyTooLarge",
            ),
            (
                b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "Malformed",
            ),
            (
                b"PUT /c HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
                "Malformed",
            ),
            (
                b"GET / HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
                "Malformed",
            ),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "Malformed"),
            (b"GET / HTTP/2\r\n\r\n", "Malformed"),
            (b"\x00\x01\x02\x03\r\n\r\n", "Malformed"),
            (b"GET /\x7f HTTP/1.1\r\n\r\n", "Malformed"),
            (b"GET / HTTP/1.1\r\nX\x00: y\r\n\r\n", "Malformed"),
            (b"hello world\r\n\r\n", "Malformed"),
            (big_head.as_bytes(), "HeadTooLarge"),
            (many_headers.as_bytes(), "HeadTooLarge"),
        ];
        for (input, want) in cases {
            assert_eq!(
                outcome(input),
                want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn oversize_head_is_refused_before_it_completes() {
        let partial = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(300));
        assert_eq!(outcome(partial.as_bytes()), "HeadTooLarge");
    }

    #[test]
    fn every_prefix_of_a_request_is_partial() {
        let req = b"PUT /shop/cart/add HTTP/1.1\r\nAuthorization: Bearer u.1.ab\r\nContent-Length: 10\r\n\r\n0123456789";
        for cut in 0..req.len() {
            assert_eq!(outcome(&req[..cut]), "partial", "cut at {cut}");
        }
        assert!(outcome(req).starts_with("Put /shop/cart/add"));
    }

    #[test]
    fn pipelined_requests_parse_one_after_another() {
        let two = b"GET /a HTTP/1.1\r\n\r\nPUT /b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
        let Ok(Parsed::Complete { request, len }) = parse(two, &LIMITS) else {
            panic!("first request not complete");
        };
        assert_eq!(request.path, "/a");
        let Ok(Parsed::Complete { request, len: len2 }) = parse(&two[len..], &LIMITS) else {
            panic!("second request not complete");
        };
        assert_eq!((request.path, request.body), ("/b", &b"x"[..]));
        assert_eq!(len + len2, two.len());
    }

    #[test]
    fn query_params_are_found_by_name() {
        assert_eq!(
            query_param("event_id=e1&goods_id=g1", "goods_id"),
            Some("g1")
        );
        assert_eq!(query_param("event_id=e1", "goods_id"), None);
        assert_eq!(query_param("", "x"), None);
        assert_eq!(query_param("x", "x"), None);
        assert_eq!(query_param("x=", "x"), Some(""));
    }
}
