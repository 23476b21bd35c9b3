//! Token keys from a JWKS URL (an identity provider's
//! `/.well-known/jwks.json`), fetched at start and every `auth.jwks_refresh`,
//! so the provider can rotate keys without herald restarting:
//!
//! - a key published by the provider is used from the next fetch on; a
//!   token naming a `kid` that no key has makes the node fetch again at once
//!   (at most once per [`MIN_REFETCH`]), so a token signed with a key
//!   rotated in a moment ago is accepted on its first use;
//! - a key the provider removed stops verifying at the next fetch;
//! - a failed fetch (unreachable, not `200`, not a JWKS, no usable key)
//!   keeps the keys held and is retried after [`RETRY_AFTER_FAILURE`] (or
//!   the refresh interval, if shorter); it is counted in
//!   `herald_auth_jwks_fetches_total{result="error"}`.
//!
//! The keys are swapped under a lock held only for the swap: verification
//! never waits on the network except for the unknown-`kid` fetch.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use tracing::{info, warn};

use crate::auth::{keys_from_jwks, Key};
use crate::http_client::{self, HttpClient};

/// Shortest time between two fetches caused by unknown `kid`s: tokens with
/// made-up `kid`s cannot make a node hammer the provider. Periodic fetches
/// do not count.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

/// How soon a failed fetch is tried again (the refresh interval when it is
/// shorter).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The keys of one JWKS URL.
pub struct RemoteJwks {
    url: Uri,
    refresh: Duration,
    client: HttpClient,
    keys: RwLock<Arc<Vec<Key>>>,
    /// Serialises fetches and remembers the last one.
    fetching: tokio::sync::Mutex<Fetches>,
}

#[derive(Default)]
struct Fetches {
    /// The last fetch made for an unknown `kid` started then.
    last_on_demand: Option<Instant>,
    last_finished: Option<Instant>,
}

impl RemoteJwks {
    /// Checks the URL; nothing is fetched until [`RemoteJwks::refresh`].
    pub fn new(url: &str, refresh: Duration) -> Result<RemoteJwks, String> {
        let url = http_client::parse_url(url, "https://idp.example/.well-known/jwks.json")?;
        Ok(RemoteJwks {
            url,
            refresh: refresh.max(Duration::from_secs(1)),
            client: http_client::client(FETCH_TIMEOUT),
            keys: RwLock::new(Arc::new(Vec::new())),
            fetching: tokio::sync::Mutex::new(Fetches::default()),
        })
    }

    /// The keys held now.
    pub(crate) fn keys(&self) -> Arc<Vec<Key>> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.keys().len()
    }

    /// True before the first successful fetch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fetches the URL and, when it holds a usable JWKS, replaces the keys.
    /// Returns how many keys it holds.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut f = self.fetching.lock().await;
        let r = self.fetch_and_swap().await;
        f.last_finished = Some(Instant::now());
        r
    }

    /// Fetches again for a token with an unknown `kid`, unless a fetch
    /// started less than [`MIN_REFETCH`] ago. True when the keys may have
    /// changed (a fetch succeeded here or finished while this one waited).
    pub(crate) async fn refetch_for_unknown_kid(&self) -> bool {
        let asked = Instant::now();
        let mut f = self.fetching.lock().await;
        // A fetch finished while this waited for the lock (the first one at
        // start, or another token's): try its keys.
        if f.last_finished.is_some_and(|at| at >= asked) {
            return true;
        }
        if f.last_on_demand
            .is_some_and(|at| at.elapsed() < MIN_REFETCH)
        {
            metrics::counter!("herald_auth_jwks_fetches_total", "result" => "skipped").increment(1);
            return false;
        }
        f.last_on_demand = Some(Instant::now());
        let r = self.fetch_and_swap().await;
        f.last_finished = Some(Instant::now());
        r.is_ok()
    }

    async fn fetch_and_swap(&self) -> Result<usize, String> {
        let r = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
        match r {
            Ok(keys) => {
                let n = keys.len();
                match self.keys.write() {
                    Ok(mut k) => *k = Arc::new(keys),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
                }
                metrics::counter!("herald_auth_jwks_fetches_total", "result" => "ok").increment(1);
                metrics::gauge!("herald_auth_jwks_keys").set(n as f64);
                info!(url = %self.url, keys = n, "JWKS fetched");
                Ok(n)
            }
            Err(why) => {
                metrics::counter!("herald_auth_jwks_fetches_total", "result" => "error")
                    .increment(1);
                warn!(url = %self.url, %why, held = self.len(), "JWKS fetch failed; keeping the keys held");
                Err(why)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let req = hyper::Request::get(self.url.clone())
            .header("accept", "application/json")
            .header("user-agent", concat!("herald/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = http_client::send(&self.client, req, MAX_JWKS_BYTES).await?;
        if status != hyper::StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        let keys = keys_from_jwks(&body)?;
        if keys.is_empty() {
            // An empty set would lock every token out: more likely a
            // provider's mistake than a wish.
            return Err("the JWKS has no keys".into());
        }
        Ok(keys)
    }

    /// Fetches every refresh interval (sooner after a failure) until
    /// `shutdown` fires. The first fetch is made at once.
    pub async fn run(self: Arc<Self>, mut shutdown: crate::ctx::ShutdownSignal) {
        loop {
            let wait = match self.refresh().await {
                Ok(_) => self.refresh,
                Err(_) => self.refresh.min(RETRY_AFTER_FAILURE),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.closing() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(RemoteJwks::new(
            "https://idp.example/.well-known/jwks.json",
            Duration::from_secs(60)
        )
        .is_ok());
        assert!(RemoteJwks::new("idp.example/jwks", Duration::from_secs(60)).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_url_keeps_the_keys_and_limits_refetches() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let r = RemoteJwks::new(
            &format!("http://127.0.0.1:{port}/jwks.json"),
            Duration::from_secs(60),
        )
        .expect("url");
        assert!(r.refresh().await.is_err());
        assert!(r.is_empty());
        // One fetch for an unknown kid (failing here), then none until
        // MIN_REFETCH has passed.
        assert!(!r.refetch_for_unknown_kid().await);
        assert!(r.fetching.lock().await.last_on_demand.is_some());
        let started = Instant::now();
        assert!(!r.refetch_for_unknown_kid().await);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
