//! Stage 3 of 8 (validation): a cart-add body -> checked ids.
//!
//! In: the request body `{"event_id":E,"goods_id":G}`. Out: `parse_ids`
//! gives the two ids, borrowed from the body and checked against
//! `[A-Za-z0-9_-]{1,64}`, or `BadAttempt` (4000). The owned `Attempt`
//! (uid, event, goods) is built only for a request that may win, when it
//! leaves the loop: the reject path allocates nothing.
//! Invariants: ids that passed are safe to put in a Redis key (no `{`, `}`
//! or `:` can forge another goods' hash tag), and so is every `Attempt`.
//! Never: looks at stock or Redis.

use serde::Deserialize;

use crate::store::keys::valid_id;

/// A checked cart-add: who wants which goods of which event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The buyer, from the token.
    pub uid: String,
    /// The event.
    pub event_id: String,
    /// The goods.
    pub goods_id: String,
}

/// The body or an id was not acceptable (4000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadAttempt;

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    event_id: &'a str,
    #[serde(borrow)]
    goods_id: &'a str,
}

/// The ids of a cart-add body, borrowed from it.
pub(crate) fn parse_ids(body: &[u8]) -> Result<(&str, &str), BadAttempt> {
    // serde's derived struct also accepts a JSON array of the fields in
    // order (`["e1","g1"]`); the SPEC's body is an object, nothing else.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(BadAttempt);
    }
    // Borrowed &str fields refuse escaped strings, which no valid id needs.
    let b: Body<'_> = serde_json::from_slice(body).map_err(|_| BadAttempt)?;
    if valid_id(b.event_id.as_bytes()) && valid_id(b.goods_id.as_bytes()) {
        Ok((b.event_id, b.goods_id))
    } else {
        Err(BadAttempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_outcomes() {
        let ok: &[&[u8]] = &[
            br#"{"event_id":"e1","goods_id":"g1"}"#,
            br#" { "goods_id" : "g1" , "event_id" : "e1" , "extra": [1,2] } "#,
        ];
        for b in ok {
            assert_eq!(
                parse_ids(b),
                Ok(("e1", "g1")),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
        let long = format!(r#"{{"event_id":"{}","goods_id":"g1"}}"#, "e".repeat(65));
        let bad: Vec<&[u8]> = vec![
            b"",
            b"null",
            b"[]",
            br#"["e1","g1"]"#,
            b"{",
            br#"{"event_id":"e1"}"#,
            br#"{"event_id":1,"goods_id":"g1"}"#,
            br#"{"event_id":"e1","goods_id":null}"#,
            br#"{"event_id":"e:1","goods_id":"g1"}"#,
            br#"{"event_id":"e{1}","goods_id":"g1"}"#,
            br#"{"event_id":"e1","goods_id":"g 1"}"#,
            br#"{"event_id":"e1","goods_id":"g#"}"#,
            br#"{"event_id":"e1","goods_id":"*"}"#,
            br#"{"event_id":"","goods_id":"g1"}"#,
            br#"{"event_id":"e\u0031","goods_id":"g1"}"#,
            b"{\"event_id\":\"e\xff\",\"goods_id\":\"g1\"}",
            br#"{"event_id":"e1","goods_id":"g1"} trailing"#,
            long.as_bytes(),
        ];
        for b in bad {
            assert_eq!(
                parse_ids(b),
                Err(BadAttempt),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }
}
