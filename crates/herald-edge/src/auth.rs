//! Who may do what: JWT connection tokens, per-namespace access rules, and
//! the HTTP API key.
//!
//! Tokens are JWTs (`jsonwebtoken`) signed with HS256 (a shared secret) or
//! RS256/ES256 (public keys from a PEM file, a JWKS file, or a JWKS URL
//! fetched again periodically, chosen by `kid`; see [`crate::jwks`]).
//! Claims: `sub` (required), `exp` (required), optional `channels`, a map from
//! channel pattern (`*` matches any run of characters) to capabilities:
//!
//! ```json
//! {"sub": "alice", "exp": 1795000000, "channels": {"room:team-*": ["subscribe", "history"]}}
//! ```
//!
//! `alg: none` and any algorithm without a configured key are refused.
//! Secrets and tokens are never logged: errors name what failed, not the
//! input.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::{codes, Channel};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// What a namespace requires for one capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessRule {
    /// Anyone, with or without a token.
    Anonymous,
    /// Any valid token.
    Authenticated,
    /// A token whose `channels` grants the capability on the channel.
    Grant,
    /// A token whose `sub` is the channel's name after `namespace:`
    /// (`user:alice` for `alice`), on all of that user's connections.
    Owner,
    /// No WebSocket client; only the HTTP API (for backends).
    Nobody,
}

impl AccessRule {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessRule::Anonymous => "anonymous",
            AccessRule::Authenticated => "authenticated",
            AccessRule::Grant => "grant",
            AccessRule::Owner => "owner",
            AccessRule::Nobody => "nobody",
        }
    }
}

impl std::str::FromStr for AccessRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "anonymous" => AccessRule::Anonymous,
            "authenticated" => AccessRule::Authenticated,
            "grant" => AccessRule::Grant,
            "owner" => AccessRule::Owner,
            "nobody" => AccessRule::Nobody,
            other => {
                return Err(format!(
                "unknown access rule `{other}`; one of anonymous, authenticated, grant, owner, nobody"
            ))
            }
        })
    }
}

/// A capability a grant can give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    Subscribe,
    Publish,
    History,
    Presence,
}

impl Capability {
    fn bit(self) -> u8 {
        match self {
            Capability::Subscribe => 1,
            Capability::Publish => 2,
            Capability::History => 4,
            Capability::Presence => 8,
        }
    }

    fn parse(s: &str) -> Option<Capability> {
        Some(match s {
            "subscribe" => Capability::Subscribe,
            "publish" => Capability::Publish,
            "history" => Capability::History,
            "presence" => Capability::Presence,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Subscribe => "subscribe",
            Capability::Publish => "publish",
            Capability::History => "history",
            Capability::Presence => "presence",
        }
    }
}

/// Key sources and checks for tokens, and the HTTP API key.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    pub hs256_secret: Option<Vec<u8>>,
    pub public_key_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    /// A JWKS fetched at start and every `jwks_refresh`, and again (at most
    /// every [`crate::jwks::MIN_REFETCH`]) when a token names a `kid` it
    /// does not have.
    pub jwks_url: Option<String>,
    pub jwks_refresh: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub api_key: Option<String>,
}

/// A configuration or token problem.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{message}")]
    Config { path: &'static str, message: String },
    #[error("{0}")]
    Token(String),
}

impl AuthError {
    /// The configuration key the error is about.
    pub fn path(&self) -> &'static str {
        match self {
            AuthError::Config { path, .. } => path,
            AuthError::Token(_) => "token",
        }
    }
}

pub(crate) struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens and API keys. One per node.
pub struct Auth {
    keys: Vec<Key>,
    remote: Option<Arc<crate::jwks::RemoteJwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    api_key: Option<Vec<u8>>,
    /// Revoked tokens and users' cutoffs, kept current from the
    /// revocations topic ([`crate::revocations`]).
    revoked: Arc<crate::revocations::Revocations>,
}

/// An authenticated connection's identity, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub sub: Arc<str>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    grants: Vec<(String, u8)>,
    /// The token's `info` claim (raw JSON, at most [`MAX_INFO_BYTES`]),
    /// shown to others in presence.
    pub info: Option<Arc<str>>,
    /// The token's `jti` (what `POST /api/revoke {jti}` names).
    pub jti: Option<Arc<str>>,
    /// When the token was issued (`iat`, s since the Unix epoch; 0 when it
    /// has none, so a user's revocation cutoff covers it). A connect
    /// hook's identity counts as issued when the hook answered.
    pub iat: u64,
}

/// Largest `info` claim kept for presence; a larger one is left out.
pub const MAX_INFO_BYTES: usize = 4096;

/// Longest `jti` accepted (a token with a longer one is refused).
pub const MAX_JTI_BYTES: usize = 256;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    channels: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

/// A connect hook's `identity`: token claims, `exp` optional (without it the
/// connection does not expire).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookClaims {
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    channels: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

/// The identity a connect hook supplied, checked like a token's claims.
pub fn identity_from_hook(raw: &serde_json::value::RawValue) -> Result<Identity, AuthError> {
    let c: HookClaims = serde_json::from_str(raw.get())
        .map_err(|e| AuthError::Token(format!("the connect hook's identity: {e}")))?;
    // Ten years stand for "never" (the expiry timer caps itself).
    let now = crate::revocations::now_secs();
    identity(Claims {
        sub: c.sub,
        exp: c.exp.unwrap_or(now + 10 * 365 * 86_400),
        iat: Some(now),
        jti: None,
        channels: c.channels,
        info: c.info,
    })
}

fn config_err(path: &'static str, message: impl Into<String>) -> AuthError {
    AuthError::Config {
        path,
        message: message.into(),
    }
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Result<Auth, AuthError> {
        let mut keys = Vec::new();
        if let Some(secret) = &cfg.hs256_secret {
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        if let Some(path) = &cfg.public_key_file {
            let pem = std::fs::read(path).map_err(|e| {
                config_err(
                    "auth.public_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, k)
            } else {
                return Err(config_err(
                    "auth.public_key_file",
                    format!(
                        "{} is not a PEM RSA or EC (P-256) public key",
                        path.display()
                    ),
                ));
            };
            keys.push(Key {
                kid: None,
                alg,
                key,
            });
        }
        if let Some(path) = &cfg.jwks_file {
            let text = std::fs::read(path).map_err(|e| {
                config_err(
                    "auth.jwks_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            keys.extend(
                keys_from_jwks(&text).map_err(|e| {
                    config_err("auth.jwks_file", format!("{}: {e}", path.display()))
                })?,
            );
        }
        let remote = match &cfg.jwks_url {
            None => None,
            Some(url) => Some(Arc::new(
                crate::jwks::RemoteJwks::new(url, cfg.jwks_refresh)
                    .map_err(|e| config_err("auth.jwks_url", e))?,
            )),
        };
        Ok(Auth {
            keys,
            remote,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway,
            api_key: cfg.api_key.as_ref().map(|k| k.as_bytes().to_vec()),
            revoked: Default::default(),
        })
    }

    /// The revocations every verification checks.
    pub fn revocations(&self) -> &Arc<crate::revocations::Revocations> {
        &self.revoked
    }

    /// How long past `exp` a token is still accepted (clock skew).
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// True when some key can verify tokens (a JWKS URL counts, fetched or
    /// not yet).
    pub fn accepts_tokens(&self) -> bool {
        !self.keys.is_empty() || self.remote.is_some()
    }

    /// The JWKS URL's keys, when one is configured: its refresh loop is
    /// started by the server ([`crate::jwks::RemoteJwks::run`]).
    pub fn remote_jwks(&self) -> Option<&Arc<crate::jwks::RemoteJwks>> {
        self.remote.as_ref()
    }

    /// [`Auth::verify`], and when the token names a `kid` that no key has,
    /// the JWKS URL fetched again (at most every
    /// [`crate::jwks::MIN_REFETCH`]) and the token tried once more: a key
    /// the issuer has just rotated in is found without waiting for the
    /// periodic refresh.
    pub async fn verify_fresh(&self, token: &str) -> Result<Identity, AuthError> {
        match self.check(token) {
            Err(Checked::UnknownKid(e)) => match &self.remote {
                Some(remote) if remote.refetch_for_unknown_kid().await => {
                    self.check(token).map_err(Checked::into_error)
                }
                _ => Err(e),
            },
            other => other.map_err(Checked::into_error),
        }
    }

    /// Verifies a token: signature, algorithm, `exp` (with leeway), `nbf`,
    /// `iss`/`aud` when configured, and the claims' shape, with the keys
    /// held now.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.check(token).map_err(Checked::into_error)
    }

    fn check(&self, token: &str) -> Result<Identity, Checked> {
        let bad = |m: &str| Checked::Refused(AuthError::Token(m.to_owned()));
        if !self.accepts_tokens() {
            return Err(bad("this server accepts no tokens (no key is configured)"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| bad("malformed token or unsupported algorithm"))?;
        let fetched = self.remote.as_ref().map(|r| r.keys());
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .chain(fetched.iter().flat_map(|k| k.iter()))
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(match &header.kid {
                Some(kid) => Checked::UnknownKid(AuthError::Token(format!(
                    "no key with kid `{}` for algorithm {:?}",
                    truncate(kid),
                    header.alg
                ))),
                None => Checked::Refused(AuthError::Token(format!(
                    "no key for algorithm {:?}",
                    header.alg
                ))),
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        // A configured `aud` / `iss` must be present (a claim of another
        // type counts as absent), not only equal when present.
        let mut required = vec!["exp", "sub"];
        if self.audience.is_some() {
            required.push("aud");
        }
        if self.issuer.is_some() {
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        match &self.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &self.issuer {
            validation.set_issuer(&[i]);
        }
        let bad = |m: &str| AuthError::Token(m.to_owned());
        let mut last = bad("bad signature");
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => {
                    let id = identity(data.claims).map_err(Checked::Refused)?;
                    if self.revoked.covers(&id) {
                        metrics::counter!("herald_auth_revoked_total").increment(1);
                        return Err(Checked::Refused(bad("token revoked")));
                    }
                    return Ok(id);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => bad("token expired"),
                        K::ImmatureSignature => bad("token not valid yet (nbf)"),
                        K::InvalidSignature => bad("bad signature"),
                        K::InvalidIssuer => bad("wrong issuer"),
                        K::InvalidAudience => bad("wrong audience"),
                        K::MissingRequiredClaim(c) => {
                            AuthError::Token(format!("missing claim `{c}`"))
                        }
                        K::Json(_) => bad("claims of the wrong shape"),
                        _ => bad("invalid token"),
                    };
                }
            }
        }
        Err(Checked::Refused(last))
    }

    /// Compares an HTTP API key in constant time. False when no key is
    /// configured: the API is closed until one is.
    pub fn check_api_key(&self, given: &[u8]) -> bool {
        fn key_digest(k: &[u8]) -> [u8; 16] {
            // A name-based UUID (SHA-1): one-way, 16 bytes whatever the
            // input's length.
            *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, k).as_bytes()
        }
        match &self.api_key {
            // Digests of equal length, compared in constant time: neither the
            // key's bytes nor its length show in the time an answer takes.
            Some(k) => bool::from(key_digest(k).ct_eq(&key_digest(given))),
            None => false,
        }
    }
}

/// Why [`Auth::check`] refused a token.
enum Checked {
    /// The token names a `kid` no key has: a JWKS URL may have it now.
    UnknownKid(AuthError),
    Refused(AuthError),
}

impl Checked {
    fn into_error(self) -> AuthError {
        match self {
            Checked::UnknownKid(e) | Checked::Refused(e) => e,
        }
    }
}

/// The RS256 and ES256 keys of a JWKS document.
pub(crate) fn keys_from_jwks(text: &[u8]) -> Result<Vec<Key>, String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        use jsonwebtoken::jwk::AlgorithmParameters as P;
        let alg = match &jwk.algorithm {
            P::RSA(_) => Algorithm::RS256,
            P::EllipticCurve(_) => Algorithm::ES256,
            _ => return Err("only RSA (RS256) and EC P-256 (ES256) keys are supported".into()),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key: {e}"))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(keys)
}

/// Client ids an anonymous connection claims (`/ws?client_id=`) are kept
/// under this prefix, apart from token subjects: an anonymous client that
/// claims `alice` cannot read or move the durable cursors of the user
/// `alice`. Tokens whose `sub` starts with it are refused.
pub const ANONYMOUS_CLIENT_PREFIX: &str = "anonymous:";

fn identity(c: Claims) -> Result<Identity, AuthError> {
    if c.sub.is_empty() || c.sub.len() > 128 {
        return Err(AuthError::Token("`sub` must be 1-128 bytes".into()));
    }
    if c.sub.starts_with(ANONYMOUS_CLIENT_PREFIX) {
        return Err(AuthError::Token(format!(
            "`sub` must not start with `{ANONYMOUS_CLIENT_PREFIX}` (reserved for anonymous client ids)"
        )));
    }
    let mut grants = Vec::with_capacity(c.channels.len());
    for (pattern, caps) in c.channels {
        let mut bits = 0u8;
        for cap in &caps {
            match Capability::parse(cap) {
                Some(c) => bits |= c.bit(),
                None => {
                    return Err(AuthError::Token(format!(
                        "unknown capability in `channels`: {}",
                        truncate(cap)
                    )))
                }
            }
        }
        grants.push((pattern, bits));
    }
    let info = c
        .info
        .filter(|i| i.get().len() <= MAX_INFO_BYTES && i.get() != "null")
        .map(|i| Arc::from(i.get()));
    if c.jti.as_ref().is_some_and(|j| j.len() > MAX_JTI_BYTES) {
        return Err(AuthError::Token(format!(
            "`jti` is at most {MAX_JTI_BYTES} bytes"
        )));
    }
    Ok(Identity {
        sub: c.sub.into(),
        exp: c.exp,
        grants,
        info,
        jti: c.jti.map(Arc::from),
        iat: c.iat.unwrap_or(0),
    })
}

/// An identity for tests of what reads one.
#[cfg(test)]
pub(crate) fn test_identity(sub: &str, jti: Option<&str>, iat: u64) -> Identity {
    Identity {
        sub: sub.into(),
        exp: u64::MAX,
        grants: vec![],
        info: None,
        jti: jti.map(Arc::from),
        iat,
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(32);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Identity {
    /// True when a `channels` grant gives `cap` on `channel`.
    pub fn granted(&self, channel: &str, cap: Capability) -> bool {
        self.grants
            .iter()
            .any(|(p, bits)| bits & cap.bit() != 0 && glob(p, channel))
    }

    /// The token's grants: pattern → capabilities.
    pub fn grants(&self) -> BTreeMap<String, Vec<&'static str>> {
        let all = [
            Capability::Subscribe,
            Capability::Publish,
            Capability::History,
            Capability::Presence,
        ];
        self.grants
            .iter()
            .map(|(p, bits)| {
                let caps = all
                    .iter()
                    .filter(|c| bits & c.bit() != 0)
                    .map(|c| c.as_str())
                    .collect();
                (p.clone(), caps)
            })
            .collect()
    }

    /// Time left before the token expires (zero when it has).
    /// Time left until `exp`, at most [`MAX_EXPIRY_TIMER`]: an `exp` near
    /// the end of time must not overflow the timer (`Instant + Duration`).
    pub fn expires_in(&self) -> Duration {
        let now = crate::revocations::now_secs();
        Duration::from_secs(self.exp.saturating_sub(now)).min(MAX_EXPIRY_TIMER)
    }
}

/// The longest expiry timer a connection arms (about ten years); a token
/// valid longer is treated as valid that long.
pub const MAX_EXPIRY_TIMER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `*` matches any run of characters (including none); nothing else is special.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `who` may use `cap` on `channel` under `rule`.
pub fn permits(
    rule: AccessRule,
    who: Option<&Identity>,
    channel: &Channel,
    cap: Capability,
) -> bool {
    match rule {
        AccessRule::Anonymous => true,
        AccessRule::Authenticated => who.is_some(),
        AccessRule::Grant => who.is_some_and(|i| i.granted(channel.as_str(), cap)),
        AccessRule::Owner => who.is_some_and(|i| {
            channel
                .as_str()
                .split_once(':')
                .is_some_and(|(_, name)| *name == *i.sub)
        }),
        AccessRule::Nobody => false,
    }
}

/// Applies a namespace's `rule` for `cap` to `who`: `Ok` or the
/// `unauthorized` error to send.
pub fn authorize(
    rule: AccessRule,
    who: Option<&Identity>,
    channel: &Channel,
    cap: Capability,
) -> Result<(), (&'static str, String)> {
    if permits(rule, who, channel, cap) {
        return Ok(());
    }
    metrics::counter!("herald_auth_denied_total", "capability" => cap.as_str()).increment(1);
    let needs = match rule {
        AccessRule::Anonymous => "nothing",
        AccessRule::Authenticated => "a valid token",
        AccessRule::Grant => "a token granting it on this channel",
        AccessRule::Owner => "the token of the channel's owner",
        AccessRule::Nobody => "the server HTTP API",
    };
    Err((
        codes::UNAUTHORIZED,
        format!("{} on `{}` needs {needs}", cap.as_str(), channel.as_str()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            leeway: Duration::from_secs(0),
            api_key: Some("k".repeat(20)),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn now() -> u64 {
        crate::revocations::now_secs()
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn an_exp_near_the_end_of_time_cannot_overflow_the_expiry_timer() {
        let a = auth();
        for exp in [i64::MAX as u64, 9_000_000_000_000_000_000, u64::MAX / 2] {
            let t = token(serde_json::json!({"sub": "alice", "exp": exp}), SECRET);
            let id = a.verify(&t).expect("a far-future exp is valid");
            let left = id.expires_in();
            assert!(left <= MAX_EXPIRY_TIMER);
            assert!(std::time::Instant::now().checked_add(left).is_some());
            assert!(tokio::time::Instant::now().checked_add(left).is_some());
        }
    }

    #[test]
    fn configured_audience_and_issuer_are_required() {
        let a = Auth::new(&AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            leeway: Duration::from_secs(0),
            audience: Some("herald".into()),
            issuer: Some("https://id.example".into()),
            ..AuthConfig::default()
        })
        .unwrap();
        let exp = now() + 60;
        let with = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"sub": "alice", "exp": exp});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            a.verify(&token(c, SECRET)).map(|i| i.sub.to_string())
        };
        let ok = serde_json::json!({"aud": "herald", "iss": "https://id.example"});
        assert_eq!(with(ok).unwrap(), "alice");
        let err = |r: Result<String, AuthError>| r.unwrap_err().to_string();
        assert_eq!(
            err(with(serde_json::json!({"iss": "https://id.example"}))),
            "missing claim `aud`"
        );
        assert_eq!(
            err(with(serde_json::json!({"aud": "herald"}))),
            "missing claim `iss`"
        );
        assert!(err(with(serde_json::json!({}))).starts_with("missing claim"));
        // Claims of the wrong type do not slip through as "absent".
        assert!(with(serde_json::json!({"aud": 7, "iss": "https://id.example"})).is_err());
        assert!(
            with(serde_json::json!({"aud": "herald", "iss": ["https://evil.example"]})).is_err()
        );
        assert!(with(serde_json::json!({"aud": ["other"], "iss": "https://id.example"})).is_err());
        assert!(with(serde_json::json!({"aud": "herald", "iss": {"x": 1}})).is_err());
        assert_eq!(
            err(with(
                serde_json::json!({"aud": "other", "iss": "https://id.example"})
            )),
            "wrong audience"
        );
        assert_eq!(
            err(with(
                serde_json::json!({"aud": "herald", "iss": "https://evil.example"})
            )),
            "wrong issuer"
        );
    }

    #[test]
    fn verifies_and_refuses() {
        let a = auth();
        let good = token(
            serde_json::json!({"sub": "alice", "exp": now() + 60, "channels": {"room:t-*": ["subscribe"]}}),
            SECRET,
        );
        let id = a.verify(&good).unwrap();
        assert_eq!(&*id.sub, "alice");
        assert!(id.granted("room:t-1", Capability::Subscribe));
        assert!(!id.granted("room:t-1", Capability::Publish));
        assert!(!id.granted("room:x", Capability::Subscribe));

        let expired = token(serde_json::json!({"sub": "a", "exp": now() - 10}), SECRET);
        assert_eq!(a.verify(&expired).unwrap_err().to_string(), "token expired");
        let forged = token(
            serde_json::json!({"sub": "a", "exp": now() + 60}),
            b"another-secret-another-secret-xx",
        );
        assert_eq!(a.verify(&forged).unwrap_err().to_string(), "bad signature");
        // alg: none, hand-made.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"a","exp":{}}}"#, now() + 60))
        );
        assert!(a.verify(&none).is_err());
        assert!(a.verify("not-a-token").is_err());
        let no_sub = token(serde_json::json!({"exp": now() + 60}), SECRET);
        assert!(a.verify(&no_sub).is_err());
        let bad_cap = token(
            serde_json::json!({"sub": "a", "exp": now() + 60, "channels": {"x:*": ["own"]}}),
            SECRET,
        );
        assert!(a.verify(&bad_cap).is_err());
    }

    #[test]
    fn api_key_compare() {
        let a = auth();
        assert!(a.check_api_key("k".repeat(20).as_bytes()));
        assert!(!a.check_api_key("k".repeat(19).as_bytes()));
        assert!(!a.check_api_key(b""));
        let closed = Auth::new(&AuthConfig::default()).unwrap();
        assert!(!closed.check_api_key(b""));
        assert!(!closed.accepts_tokens());
    }

    #[test]
    fn globs() {
        assert!(glob("chat:*", "chat:a"));
        assert!(glob("*", "x:y"));
        assert!(glob("a:*-x-*", "a:1-x-2"));
        assert!(!glob("a:*-x-*", "a:1-y-2"));
        assert!(glob("a:b", "a:b"));
        assert!(!glob("a:b", "a:bc"));
        assert!(!glob("a:*b", "a:c"));
    }

    #[test]
    fn the_info_claim_is_kept_as_is_up_to_its_limit() {
        let a = auth();
        let exp = now() + 60;
        let info = serde_json::json!({ "name": "Alice", "tags": [1, 2] });
        let id = a
            .verify(&token(
                serde_json::json!({ "sub": "a", "exp": exp, "info": info }),
                SECRET,
            ))
            .unwrap();
        let kept: serde_json::Value = serde_json::from_str(id.info.as_deref().unwrap()).unwrap();
        assert_eq!(kept, info);
        let big = "x".repeat(MAX_INFO_BYTES);
        let id = a
            .verify(&token(
                serde_json::json!({ "sub": "a", "exp": exp, "info": big }),
                SECRET,
            ))
            .unwrap();
        assert!(
            id.info.is_none(),
            "an info claim over the limit is left out"
        );
        let id = a
            .verify(&token(
                serde_json::json!({ "sub": "a", "exp": exp, "info": null }),
                SECRET,
            ))
            .unwrap();
        assert!(id.info.is_none());
    }

    #[test]
    fn rules() {
        let ch = Channel::parse("user:alice").unwrap();
        let alice = Identity {
            sub: "alice".into(),
            exp: 0,
            grants: vec![],
            info: None,
            jti: None,
            iat: 0,
        };
        let bob = Identity {
            sub: "bob".into(),
            exp: 0,
            grants: vec![("user:*".into(), Capability::History.bit())],
            info: None,
            jti: None,
            iat: 0,
        };
        let s = Capability::Subscribe;
        assert!(permits(AccessRule::Owner, Some(&alice), &ch, s));
        assert!(!permits(AccessRule::Owner, Some(&bob), &ch, s));
        assert!(!permits(AccessRule::Owner, None, &ch, s));
        assert!(permits(AccessRule::Anonymous, None, &ch, s));
        assert!(!permits(AccessRule::Authenticated, None, &ch, s));
        assert!(!permits(AccessRule::Grant, Some(&bob), &ch, s));
        assert!(permits(
            AccessRule::Grant,
            Some(&bob),
            &ch,
            Capability::History
        ));
        assert!(!permits(AccessRule::Nobody, Some(&alice), &ch, s));
    }
}
