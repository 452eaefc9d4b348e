//! Bearer-token authentication of the API routes, and the per-key request rate.
//!
//! - `--api-key`: one token, whose holder is the key named `default`.
//! - `--api-keys-file`: named keys, one `name:SHA256_HEX_OF_TOKEN` a line (`#` comments and
//!   blank lines allowed), read again on SIGHUP. The file holds hashes, never tokens.
//!
//! A job belongs to the key that submitted it. With no key configured every client is the
//! same anonymous caller, as before keys existed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The name `--api-key`'s holder has.
pub const DEFAULT_KEY_NAME: &str = "default";
/// Longest key name.
const MAX_NAME_BYTES: usize = 64;
/// Longest keys file read.
const MAX_KEYS_FILE_BYTES: u64 = 4 << 20;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name; `None` when no key is configured (every client is the same caller).
    pub owner: Option<String>,
}

/// One named key: its name and the SHA-256 of its token.
#[derive(Debug, Clone, PartialEq)]
struct NamedKey {
    name: String,
    hash: [u8; 32],
}

/// A token bucket: `rate` requests a second, bursts of up to one second's worth.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The configured keys and each key's request rate.
pub struct Keys {
    single: Option<[u8; 32]>,
    file: Option<PathBuf>,
    named: RwLock<Vec<NamedKey>>,
    /// Requests a second per key (`None`: unbounded).
    rate: Option<f64>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A key name: 1 to 64 letters, digits, `.`, `_` or `-` (no `:`, which scopes idempotency
/// keys).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a keys file's text; the error names the line.
fn parse_keys(text: &str, with_default: bool) -> Result<Vec<NamedKey>, String> {
    let mut keys: Vec<NamedKey> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {n}: expected name:sha256-of-token"))?;
        let (name, hash) = (name.trim(), hash.trim());
        if !valid_name(name) {
            return Err(format!(
                "line {n}: a key name is 1 to {MAX_NAME_BYTES} letters, digits, `.`, `_` or `-`"
            ));
        }
        if with_default && name == DEFAULT_KEY_NAME {
            return Err(format!(
                "line {n}: `{DEFAULT_KEY_NAME}` is --api-key's name; choose another"
            ));
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hash, &mut digest)
            .map_err(|_| format!("line {n}: the hash must be 64 hex digits (SHA-256)"))?;
        if keys.iter().any(|k| k.name == name) {
            return Err(format!("line {n}: the name `{name}` is used twice"));
        }
        if keys.iter().any(|k| k.hash == digest) {
            return Err(format!("line {n}: the same token is listed twice"));
        }
        keys.push(NamedKey {
            name: name.to_string(),
            hash: digest,
        });
    }
    Ok(keys)
}

fn read_keys(path: &Path, with_default: bool) -> anyhow::Result<Vec<NamedKey>> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEYS_FILE_BYTES).read_to_string(&mut text))
        .map_err(|e| anyhow::anyhow!("cannot read --api-keys-file {}: {e}", path.display()))?;
    parse_keys(&text, with_default)
        .map_err(|e| anyhow::anyhow!("--api-keys-file {}: {e}", path.display()))
}

/// Who may call the API, and how often.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The token of the key named `default`.
    pub api_key: Option<String>,
    /// Named keys, one `name:SHA256_HEX_OF_TOKEN` a line; read again on SIGHUP.
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Requests a second each key may make.
    pub key_requests_per_s: Option<f64>,
}

impl Keys {
    /// The keys of `--api-key` and `--api-keys-file`, each key limited to `rate` requests a
    /// second.
    pub fn load(
        api_key: Option<&str>,
        file: Option<&Path>,
        rate: Option<f64>,
    ) -> anyhow::Result<Keys> {
        let named = match file {
            Some(path) => read_keys(path, api_key.is_some())?,
            None => Vec::new(),
        };
        Ok(Keys {
            single: api_key.map(sha256),
            file: file.map(Path::to_path_buf),
            named: RwLock::new(named),
            rate: rate.filter(|r| r.is_finite() && *r > 0.0),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// No key at all: every client is the same anonymous caller.
    pub fn is_open(&self) -> bool {
        self.single.is_none() && self.file.is_none()
    }

    /// Reads the keys file again; on an error the keys in use stay. Answers how many keys
    /// the file names.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let Some(path) = &self.file else {
            return Ok(0);
        };
        let keys = read_keys(path, self.single.is_some())?;
        let n = keys.len();
        *self.named.write().unwrap_or_else(|p| p.into_inner()) = keys;
        // Buckets of removed keys go with them.
        let names: Vec<String> = self.names();
        self.lock_buckets()
            .retain(|name, _| name == DEFAULT_KEY_NAME || names.contains(name));
        Ok(n)
    }

    fn names(&self) -> Vec<String> {
        self.named
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|k| k.name.clone())
            .collect()
    }

    fn lock_buckets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller of a request: `401` for a wrong or missing token, `429` with Retry-After
    /// past the key's request rate.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller { owner: None });
        }
        let token = bearer(headers).ok_or(ApiError::Unauthorized)?;
        let digest = sha256(token);
        // Every key is compared, in constant time, whichever matches.
        let mut found: Option<String> = None;
        if let Some(single) = &self.single {
            if bool::from(digest.ct_eq(single)) {
                found = Some(DEFAULT_KEY_NAME.to_string());
            }
        }
        for key in self.named.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if bool::from(digest.ct_eq(&key.hash)) {
                found = Some(key.name.clone());
            }
        }
        let name = found.ok_or(ApiError::Unauthorized)?;
        self.take_token(&name, Instant::now())?;
        Ok(Caller { owner: Some(name) })
    }

    /// Takes one request from the key's bucket, or answers when the next one is allowed.
    fn take_token(&self, name: &str, now: Instant) -> Result<(), ApiError> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let burst = rate.max(1.0);
        let mut buckets = self.lock_buckets();
        let bucket = buckets.entry(name.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
        Err(ApiError::RateLimited {
            reason: format!("key `{name}` is past its {rate} requests a second"),
            retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
    }
}

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110
/// §11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        h
    }

    fn single(key: &str) -> Keys {
        Keys::load(Some(key), None, None).expect("keys")
    }

    #[test]
    fn api_key_needs_the_exact_bearer_token() {
        let open = Keys::load(None, None, None).expect("keys");
        assert_eq!(
            open.authenticate(&HeaderMap::new()).ok(),
            Some(Caller { owner: None })
        );
        let k = single("s3cret");
        assert!(k.authenticate(&HeaderMap::new()).is_err());
        assert!(k.authenticate(&with("Bearer s3cre")).is_err());
        assert_eq!(
            k.authenticate(&with("Bearer s3cret")).ok(),
            Some(Caller {
                owner: Some(DEFAULT_KEY_NAME.into())
            })
        );
        assert!(k.authenticate(&with("Basic s3cret")).is_err());
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let k = single("s3cret");
        assert!(k.authenticate(&with("bearer s3cret")).is_ok());
        assert!(k.authenticate(&with("BEARER s3cret")).is_ok());
    }

    #[test]
    fn a_keys_file_names_each_token_and_refuses_nonsense() {
        let alice = hex::encode(sha256("tok-a"));
        let bob = hex::encode(sha256("tok-b"));
        let keys = parse_keys(
            &format!("# shop keys\nalice:{alice}\n\n bob : {bob}\n"),
            false,
        )
        .expect("parses");
        assert_eq!(
            keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["alice", "bob"]
        );
        for bad in [
            format!("alice {alice}"),
            format!("al:ice:{alice}"),
            format!("alice:{}", &alice[..63]),
            format!("alice:{alice}\nalice:{bob}"),
            format!("alice:{alice}\nbob:{alice}"),
            format!(":{alice}"),
        ] {
            assert!(parse_keys(&bad, false).is_err(), "{bad}");
        }
        assert!(parse_keys(&format!("default:{alice}"), true).is_err());
        assert!(parse_keys(&format!("default:{alice}"), false).is_ok());
    }

    #[test]
    fn each_key_has_its_own_request_rate() {
        let k = Keys::load(Some("s3cret"), None, Some(2.0)).expect("keys");
        let t0 = Instant::now();
        assert!(k.take_token("a", t0).is_ok());
        assert!(k.take_token("a", t0).is_ok());
        let refused = k
            .take_token("a", t0)
            .expect_err("third in the same instant");
        assert_eq!(refused.status().as_u16(), 429);
        assert!(k.take_token("b", t0).is_ok(), "another key is not slowed");
        assert!(k.take_token("a", t0 + Duration::from_millis(500)).is_ok());
    }
}
