//! The client side: what speaks HTTP *to* a seckill server. Never used by
//! the server.
//!
//! - [`bench`](mod@bench): `seckill bench`, the load generator (SPEC §8).
//! - [`report`]: `seckill bench --report`, the run as one HTML page.
//! - This file: the one HTTP/1.1 response reader that the load generator,
//!   the integration tests (`tests/support`) and the examples share.
//!   Parsing borrows the buffer and allocates nothing, so the load
//!   generator measures the server, not its own reader.

use std::io::{ErrorKind, Read};

use httparse::{Header, Status, EMPTY_HEADER};

pub mod bench;
pub mod report;

/// Headers a response may have at most (the server writes at most 7).
const MAX_HEADERS: usize = 32;

/// One whole response at the front of a buffer, borrowing it.
#[derive(Debug, Clone, Copy)]
pub struct Response<'b> {
    /// The HTTP status.
    pub status: u16,
    /// The body (`Content-Length` bytes).
    pub body: &'b [u8],
    /// Bytes of the buffer the response takes, head and body.
    pub len: usize,
    headers: [Header<'b>; MAX_HEADERS],
    count: usize,
}

impl<'b> Response<'b> {
    /// Every header, in order.
    pub fn headers(&self) -> &[Header<'b>] {
        &self.headers[..self.count]
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Whether the server says it closes the connection after this one.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
    }

    /// The `code` of a `{"code":N,...}` body, without a JSON parser.
    pub fn code(&self) -> Option<i64> {
        let at = self.body.windows(7).position(|w| w == b"\"code\":")? + 7;
        let rest = self.body[at..].trim_ascii_start();
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'-'))
            .unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
    }
}

/// Why bytes are not a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Not HTTP/1.1, or no numeric `Content-Length` (the server always
    /// sends one).
    Malformed,
    /// The server closed before the response was whole.
    Closed,
    /// The read timed out.
    Timeout,
    /// The connection was reset, or another read error.
    Reset,
}

/// The response at the front of `buf`, or None while it is not whole yet.
pub fn parse(buf: &[u8]) -> Result<Option<Response<'_>>, ReadError> {
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Ok(None),
        Err(_) => return Err(ReadError::Malformed),
    };
    let status = resp.code.ok_or(ReadError::Malformed)?;
    let count = resp.headers.len();
    let body_len: usize = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .ok_or(ReadError::Malformed)?;
    let Some(body) = buf.get(head..head + body_len) else {
        return Ok(None);
    };
    Ok(Some(Response {
        status,
        body,
        len: head + body_len,
        headers,
        count,
    }))
}

/// Reads from `stream` into `buf` until a whole response is at its front,
/// and returns it. Bytes after it stay in `buf` (a pipelined answer); the
/// caller drains `len` bytes once done with it.
pub fn read<'b>(stream: &mut impl Read, buf: &'b mut Vec<u8>) -> Result<Response<'b>, ReadError> {
    let mut chunk = [0u8; 8192];
    while parse(buf)?.is_none() {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ReadError::Timeout)
            }
            Err(_) => return Err(ReadError::Reset),
        }
    }
    // Whole by the loop's test; parsed again to hand out the borrow.
    parse(buf)?.ok_or(ReadError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\nConnection: close\r\n\r\n{\"code\":1001,\"msg\":\"no stock\",\"data\":null}";

    #[test]
    fn a_whole_response_is_parsed_and_a_partial_one_waits() {
        let r = parse(OK).unwrap().unwrap();
        assert_eq!((r.status, r.len, r.code()), (200, OK.len(), Some(1001)));
        assert!(r.closes());
        assert_eq!(r.header("content-length"), Some(&b"42"[..]));
        for cut in [10, OK.len() - 1] {
            assert!(parse(&OK[..cut]).unwrap().is_none(), "{cut}");
        }
        assert_eq!(
            parse(b"nonsense\r\n\r\n").unwrap_err(),
            ReadError::Malformed
        );
    }

    #[test]
    fn read_leaves_a_pipelined_answer_in_the_buffer() {
        let two = [OK, OK].concat();
        let mut buf = Vec::new();
        let len = read(&mut &two[..], &mut buf).unwrap().len;
        buf.drain(..len);
        assert_eq!(parse(&buf).unwrap().unwrap().code(), Some(1001));
        let mut empty = Vec::new();
        assert_eq!(
            read(&mut &b""[..], &mut empty).unwrap_err(),
            ReadError::Closed
        );
    }

    #[test]
    fn code_is_read_from_the_body() {
        let resp = |body: &'static [u8]| Response {
            status: 200,
            body,
            len: 0,
            headers: [EMPTY_HEADER; MAX_HEADERS],
            count: 0,
        };
        assert_eq!(resp(br#"{"code": 0,"msg":"ok"}"#).code(), Some(0));
        assert_eq!(resp(br#"{"code":4001}"#).code(), Some(4001));
        assert_eq!(resp(b"nothing").code(), None);
    }
}
