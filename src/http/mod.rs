//! Stages 2 and 8: HTTP/1.1 bytes in, HTTP/1.1 bytes out, hand-rolled on
//! `httparse` on purpose. Knows nothing of Redis, stock or routes.

pub mod parse;
pub mod response;
