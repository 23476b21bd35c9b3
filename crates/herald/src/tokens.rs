//! `herald gentoken` and `herald checktoken`: sign and verify connection
//! tokens with the configured keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::config::Settings;

#[derive(Args)]
pub struct GentokenArgs {
    /// Configuration file whose auth.hs256_secret (HS256) and
    /// auth.issuer/audience are used.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// The user the token is for.
    #[arg(long)]
    sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// A grant PATTERN=CAP[+CAP...], e.g. 'room:team-*=subscribe+history'
    /// (capabilities: subscribe, publish, history, presence). Repeatable.
    #[arg(long = "grant")]
    grants: Vec<String>,
    /// Sign with this PEM private key instead of the HS256 secret.
    #[arg(long)]
    private_key: Option<PathBuf>,
    /// Algorithm for --private-key: RS256 or ES256.
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// `kid` header (to pick a key from a JWKS file).
    #[arg(long)]
    kid: Option<String>,
}

#[derive(Args)]
pub struct ChecktokenArgs {
    /// Configuration file with the auth.* keys to verify with.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// The token; `-` reads it from stdin (keeps it out of shell history).
    token: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn settings(
    file: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Settings> {
    Settings::load(file, env).map_err(|e| anyhow::anyhow!("configuration:\n{e}"))
}

pub fn gentoken(a: GentokenArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let s = settings(a.config.as_deref(), env)?;
    let mut channels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in &a.grants {
        let Some((pattern, caps)) = g.split_once('=') else {
            bail!("--grant `{g}` must be PATTERN=CAP[+CAP...]");
        };
        let caps: Vec<String> = caps.split('+').map(str::to_owned).collect();
        for c in &caps {
            if !["subscribe", "publish", "history", "presence"].contains(&c.as_str()) {
                bail!("--grant `{g}`: unknown capability `{c}`");
            }
        }
        channels.entry(pattern.to_owned()).or_default().extend(caps);
    }
    let mut claims = serde_json::json!({
        "sub": a.sub,
        "iat": now(),
        "exp": now() + a.ttl_secs,
        // Names the token for `POST /api/revoke {jti}`.
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if !channels.is_empty() {
        claims["channels"] = serde_json::to_value(&channels)?;
    }
    if !s.auth.issuer.is_empty() {
        claims["iss"] = s.auth.issuer.clone().into();
    }
    if !s.auth.audience.is_empty() {
        claims["aud"] = s.auth.audience.clone().into();
    }
    let (header, key) = match &a.private_key {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let (alg, key) = match a.alg.as_str() {
                "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)),
                "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)),
                other => bail!("--alg {other}: RS256 or ES256"),
            };
            let key =
                key.with_context(|| format!("{} is not a {} private key", path.display(), a.alg))?;
            let mut h = Header::new(alg);
            h.kid = a.kid.clone();
            (h, key)
        }
        None => {
            if s.auth.hs256_secret.is_empty() {
                bail!("no signing key: set auth.hs256_secret (or HERALD_AUTH_HS256_SECRET), or pass --private-key");
            }
            let mut h = Header::new(Algorithm::HS256);
            h.kid = a.kid.clone();
            (h, EncodingKey::from_secret(s.auth.hs256_secret.as_bytes()))
        }
    };
    println!("{}", jsonwebtoken::encode(&header, &claims, &key)?);
    Ok(())
}

pub async fn checktoken(
    a: ChecktokenArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let s = settings(a.config.as_deref(), env)?;
    let auth = herald_edge::Auth::new(&s.auth_config()?)?;
    if let Some(remote) = auth.remote_jwks() {
        remote
            .refresh()
            .await
            .map_err(|e| anyhow::anyhow!("auth.jwks_url: {e}"))?;
    }
    let token = if a.token == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
        t.trim().to_owned()
    } else {
        a.token
    };
    let id = auth
        .verify(&token)
        .map_err(|e| anyhow::anyhow!("token refused: {e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "sub": id.sub,
            "exp": id.exp,
            "expires_in_secs": id.expires_in().as_secs(),
            "channels": id.grants(),
        }))?
    );
    Ok(())
}
