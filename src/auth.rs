//! Stage 3 of 8 (identity): SPEC §2 tokens, minted and verified.
//!
//! A token is `<uid>.<exp>.<sig>`: `uid` matches `[A-Za-z0-9_-]{1,64}`, `exp`
//! is unix seconds, `sig` the lowercase hex HMAC-SHA256 of `<uid>.<exp>` under
//! `auth.secret`.
//! In: the `Authorization` header's bytes and the unix now.
//! Out: the uid, borrowed from the header, or `AuthError` (4001).
//! Invariants: the signature is compared in constant time (`verify_slice`);
//! `exp < now` is expired; the key is set up once, not per request.
//! Never: allocates while verifying, or says which part of a token was wrong.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::keys::valid_id;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused. All of them answer 4001.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <uid>.<exp>.<sig>` with valid fields.
    Malformed,
    /// The signature does not match.
    BadSignature,
    /// `exp` is in the past.
    Expired,
}

/// Mints and verifies tokens under one secret.
#[derive(Clone)]
pub struct Signer {
    // INVARIANT: keyed with `auth.secret`, never updated; clones start fresh.
    keyed: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer for `secret`.
    pub fn new(secret: &[u8]) -> Self {
        // INVARIANT: HMAC takes keys of any length (RFC 2104 hashes long
        // ones), so `new_from_slice` cannot fail for any secret.
        #[allow(clippy::expect_used)]
        let keyed = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
        Signer { keyed }
    }

    /// A token for `uid` that expires at `exp_unix_s`.
    pub fn mint(&self, uid: &str, exp_unix_s: u64) -> String {
        let signed = format!("{uid}.{exp_unix_s}");
        let mut mac = self.keyed.clone();
        mac.update(signed.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    /// Checks an `Authorization` header value and returns the uid.
    pub fn verify<'h>(&self, header: &'h [u8], now_unix_s: u64) -> Result<&'h str, AuthError> {
        let token = header
            .strip_prefix(b"Bearer ")
            .ok_or(AuthError::Malformed)?;
        let (signed, sig_hex) = split_last_dot(token).ok_or(AuthError::Malformed)?;
        let (uid, exp) = split_first_dot(signed).ok_or(AuthError::Malformed)?;
        if !valid_id(uid) || exp.is_empty() || exp.len() > 20 || sig_hex.len() != 64 {
            return Err(AuthError::Malformed);
        }
        let mut exp_unix_s: u64 = 0;
        for &b in exp {
            if !b.is_ascii_digit() {
                return Err(AuthError::Malformed);
            }
            exp_unix_s = exp_unix_s
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or(AuthError::Malformed)?;
        }
        let mut sig = [0u8; 32];
        // Lowercase only, as the SPEC writes it; `hex` also takes uppercase.
        if sig_hex.iter().any(u8::is_ascii_uppercase)
            || hex::decode_to_slice(sig_hex, &mut sig).is_err()
        {
            return Err(AuthError::Malformed);
        }
        let mut mac = self.keyed.clone();
        mac.update(signed);
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        if exp_unix_s < now_unix_s {
            return Err(AuthError::Expired);
        }
        // valid_id checked every byte is ASCII.
        std::str::from_utf8(uid).map_err(|_| AuthError::Malformed)
    }
}

fn split_last_dot(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().rposition(|&c| c == b'.')?;
    Some((&b[..i], &b[i + 1..]))
}

fn split_first_dot(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == b'.')?;
    Some((&b[..i], &b[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn minted_token_verifies_to_its_uid() {
        let s = Signer::new(b"secret");
        let t = s.mint("alice_01-x", NOW + 60);
        assert_eq!(s.verify(&bearer(&t), NOW), Ok("alice_01-x"));
        // Expiry is inclusive: exp == now is still valid.
        let t = s.mint("bob", NOW);
        assert_eq!(s.verify(&bearer(&t), NOW), Ok("bob"));
    }

    #[test]
    fn known_vector_matches_hmac_sha256() {
        // echo -n 'u1.2000000000' | openssl dgst -sha256 -hmac s3cret
        let s = Signer::new(b"s3cret");
        let t = s.mint("u1", 2_000_000_000);
        let sig = t.rsplit('.').next().unwrap();
        assert_eq!(sig.len(), 64);
        let mut mac = HmacSha256::new_from_slice(b"s3cret").unwrap();
        mac.update(b"u1.2000000000");
        assert_eq!(sig, hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn expired_token_is_refused() {
        let s = Signer::new(b"secret");
        let t = s.mint("alice", NOW - 1);
        assert_eq!(s.verify(&bearer(&t), NOW), Err(AuthError::Expired));
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let s = Signer::new(b"secret");
        let t = s.mint("alice", NOW + 60);
        let other = Signer::new(b"other").mint("alice", NOW + 60);
        let sig = t.rsplit('.').next().unwrap();
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let cases: Vec<(Vec<u8>, AuthError)> = vec![
            (bearer(&other), AuthError::BadSignature),
            (
                bearer(&format!("mallory.{}.{sig}", NOW + 60)),
                AuthError::BadSignature,
            ),
            (
                bearer(&format!("alice.{}.{sig}", NOW + 61)),
                AuthError::BadSignature,
            ),
            (
                format!("Bearer {}", String::from_utf8(flipped).unwrap()).into_bytes(),
                AuthError::BadSignature,
            ),
            (bearer(&t.to_uppercase()), AuthError::Malformed),
            (t.clone().into_bytes(), AuthError::Malformed),
            (format!("bearer {t}").into_bytes(), AuthError::Malformed),
            (bearer("alice"), AuthError::Malformed),
            (bearer("alice.123"), AuthError::Malformed),
            (bearer(&format!("a.b.{}.{sig}", NOW)), AuthError::Malformed),
            (bearer(&format!(".{}.{sig}", NOW)), AuthError::Malformed),
            (
                bearer(&format!("al ice.{}.{sig}", NOW)),
                AuthError::Malformed,
            ),
            (bearer(&format!("alice.-5.{sig}")), AuthError::Malformed),
            (bearer(&format!("alice..{sig}")), AuthError::Malformed),
            (
                bearer(&format!("alice.99999999999999999999999.{sig}")),
                AuthError::Malformed,
            ),
            (
                bearer(&format!("alice.{}.{}", NOW, &sig[..63])),
                AuthError::Malformed,
            ),
            (
                bearer(&format!("alice.{}.{}zz", NOW, &sig[..62])),
                AuthError::Malformed,
            ),
            (
                bearer(&format!("{}.{}.{sig}", "u".repeat(65), NOW)),
                AuthError::Malformed,
            ),
            (b"Bearer \xff\xfe.1.aa".to_vec(), AuthError::Malformed),
        ];
        for (header, want) in cases {
            assert_eq!(
                s.verify(&header, NOW),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(&header)
            );
        }
    }
}
