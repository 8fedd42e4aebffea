//! The dashboard's sessions, without server-side state: the cookie is an expiry signed with HMAC-SHA256 under a
//! key derived from the admin key, so every instance that shares the admin key accepts it, a changed admin key
//! ends every session, and the admin key itself never leaves the login form. A form's CSRF token is the same
//! HMAC of the session cookie: a page of another origin can neither read it nor, with `SameSite=Strict`, send the
//! cookie at all.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub(crate) const COOKIE: &str = "keel_session";
/// How long a session lasts.
pub(crate) const LIFETIME_MS: i64 = 12 * 3600 * 1000;

/// The signing key of one admin key (or of a random per-process secret when the admin endpoints are open on
/// loopback without a key).
#[derive(Clone)]
pub(crate) struct Signer([u8; 32]);

impl Signer {
    pub(crate) fn of(secret: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"keel-dashboard-session\0");
        h.update(secret.as_bytes());
        Self(h.finalize().into())
    }

    /// The MAC of `parts`; `None` only if the HMAC refused the key, which it never does (any length works).
    fn mac(&self, parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).ok()?;
        for p in parts {
            mac.update(p);
            mac.update(b"\0");
        }
        Some(mac)
    }

    fn sign(&self, parts: &[&[u8]]) -> String {
        self.mac(parts).map(|m| hex(&m.finalize().into_bytes())).unwrap_or_default()
    }

    fn verifies(&self, parts: &[&[u8]], sig: &[u8]) -> bool {
        self.mac(parts).is_some_and(|m| m.verify_slice(sig).is_ok())
    }

    /// A new session cookie's value: `EXPIRY.SIGNATURE`.
    pub(crate) fn issue(&self, now_ms: i64) -> String {
        let exp = (now_ms + LIFETIME_MS).to_string();
        let sig = self.sign(&[b"session", exp.as_bytes()]);
        format!("{exp}.{sig}")
    }

    /// Whether `value` is a session this key issued that has not expired (compared in constant time).
    pub(crate) fn verify(&self, value: &str, now_ms: i64) -> bool {
        let Some((exp, sig)) = value.split_once('.') else { return false };
        let Ok(expiry) = exp.parse::<i64>() else { return false };
        let Some(sig) = unhex(sig) else { return false };
        expiry > now_ms && self.verifies(&[b"session", exp.as_bytes()], &sig)
    }

    /// The CSRF token of forms served to the session `cookie`.
    pub(crate) fn csrf(&self, cookie: &str) -> String {
        self.sign(&[b"csrf", cookie.as_bytes()])
    }

    /// Whether `token` is the CSRF token of `cookie` (constant time).
    pub(crate) fn check_csrf(&self, cookie: &str, token: &str) -> bool {
        unhex(token).is_some_and(|t| self.verifies(&[b"csrf", cookie.as_bytes()], &t))
    }
}

/// The session cookie the request carries, if any.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<String> {
    named_cookie(headers, COOKIE)
}

/// The value of the cookie `name` the request carries, if any.
pub(crate) fn named_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `Set-Cookie` for a session: HTTP-only, `SameSite=Strict`, scoped to `/ui`, and `Secure` unless the page was
/// asked for over plain HTTP on a loopback address (a browser would drop a secure cookie there, and nothing
/// crosses a network).
pub(crate) fn set_cookie(value: &str, headers: &HeaderMap) -> String {
    let secure = if plain_loopback(headers) { "" } else { "; Secure" };
    format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}", LIFETIME_MS / 1000)
}

/// `Set-Cookie` that ends the session in the browser.
pub(crate) fn clear_cookie(headers: &HeaderMap) -> String {
    let secure = if plain_loopback(headers) { "" } else { "; Secure" };
    format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

fn plain_loopback(headers: &HeaderMap) -> bool {
    let forwarded_https =
        headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let host = headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let loopback = name == "localhost"
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback && !forwarded_https
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_session_verifies_until_it_expires_and_only_under_its_admin_key() {
        let signer = Signer::of("admin-key");
        let value = signer.issue(1_000);
        assert!(!value.contains("admin-key"));
        assert!(signer.verify(&value, 2_000));
        assert!(!signer.verify(&value, 1_000 + LIFETIME_MS), "expired");
        assert!(!Signer::of("another key").verify(&value, 2_000), "a changed admin key ends every session");
        let (exp, sig) = value.split_once('.').unwrap();
        let later = format!("{}.{sig}", exp.parse::<i64>().unwrap() + 1);
        assert!(!signer.verify(&later, 2_000), "the expiry cannot be extended");
        assert!(!signer.verify("garbage", 2_000));
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let signer = Signer::of("k");
        let (a, b) = (signer.issue(1), signer.issue(2));
        assert!(signer.check_csrf(&a, &signer.csrf(&a)));
        assert!(!signer.check_csrf(&b, &signer.csrf(&a)));
        assert!(!signer.check_csrf(&a, ""));
    }

    #[test]
    fn the_cookie_is_secure_except_over_plain_http_on_loopback() {
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        assert!(!set_cookie("v", &h).contains("Secure"));
        h.insert("host", "keel.example.com".parse().unwrap());
        assert!(set_cookie("v", &h).contains("; Secure"));
        h.insert("host", "localhost:8080".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(set_cookie("v", &h).contains("; Secure"));
        assert!(set_cookie("v", &h).contains("HttpOnly; SameSite=Strict"));
    }
}
