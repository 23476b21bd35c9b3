//! The outbound HTTP client herald calls other services with (backend hooks,
//! the JWKS URL): hyper's pooled client over `http://` or `https://`, TLS by
//! rustls (ring, the crypto the JWT verification already builds) checking
//! servers against the Mozilla roots of `webpki-roots`, so a node needs no
//! system certificate store.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One pooled client, shared by all calls to a service.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client whose connections (TCP and TLS handshake) time out after
/// `connect_timeout`.
pub fn client(connect_timeout: Duration) -> HttpClient {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// An outbound URL: `http://` or `https://`, with a host.
pub fn parse_url(s: &str, example: &str) -> Result<Uri, String> {
    match s.parse::<Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Ok(u),
        _ => Err(format!(
            "must be an http:// or https:// URL, like {example}"
        )),
    }
}

/// Sends `req` and reads at most `limit` bytes of the answer: its status and
/// body, or why it failed.
pub async fn send(
    client: &HttpClient,
    req: hyper::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let resp = client.request(req).await.map_err(|e| {
        // hyper's top error says only "client error (Connect)"; the cause
        // says what (refused, TLS, DNS).
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        msg
    })?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse_url("http://127.0.0.1:3000/hook", "x").is_ok());
        assert!(parse_url("https://app.example/.well-known/jwks.json", "x").is_ok());
        for bad in ["ftp://x/y", "/hook", "not a url", "https://"] {
            assert!(parse_url(bad, "x").is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn https_is_spoken_and_a_failure_names_its_cause() {
        // Nothing listens on a port just freed: the error says so rather
        // than refusing the scheme.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let c = client(Duration::from_secs(2));
        for scheme in ["http", "https"] {
            let req = hyper::Request::get(format!("{scheme}://127.0.0.1:{port}/"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let err = send(&c, req, 1024).await.expect_err("nothing listens");
            assert!(err.to_lowercase().contains("refused"), "{scheme}: {err}");
        }
    }
}
