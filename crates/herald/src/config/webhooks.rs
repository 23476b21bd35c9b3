//! `[webhooks]`: outbound webhooks, one `[[webhooks.endpoints]]` table per
//! endpoint (docs/configuration.md, docs/operations.md "Webhooks").

use std::time::Duration;

use herald_edge::webhooks::{self, Endpoint, EventKind, WebhooksConfig};
use serde::{Deserialize, Serialize};

use super::load::err;
use super::ConfigError;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSettings {
    pub endpoints: Vec<EndpointSettings>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointSettings {
    /// Letters, digits, `_` and `-`: names its consumer group and metrics.
    pub name: String,
    pub url: String,
    /// The signing key; or `secret_env`, the environment variable holding it.
    pub secret: String,
    pub secret_env: String,
    /// connect, disconnect, join, leave, occupied, vacated, message.
    pub events: Vec<String>,
    /// Channel events of these namespaces only (empty: all; `message`
    /// needs them named).
    pub namespaces: Vec<String>,
    pub max_in_flight: usize,
    pub attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub timeout_ms: u64,
}

impl Default for EndpointSettings {
    fn default() -> Self {
        EndpointSettings {
            name: String::new(),
            url: String::new(),
            secret: String::new(),
            secret_env: String::new(),
            events: Vec::new(),
            namespaces: Vec::new(),
            max_in_flight: 16,
            attempts: 8,
            backoff_ms: 500,
            max_backoff_ms: 60_000,
            timeout_ms: 5_000,
        }
    }
}

impl EndpointSettings {
    /// The secret from the file or from its environment variable.
    fn secret(&self, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        if !self.secret_env.is_empty() {
            return env(&self.secret_env);
        }
        (!self.secret.is_empty()).then(|| self.secret.clone())
    }
}

impl WebhooksSettings {
    pub(super) fn validate(
        &self,
        namespaces: &[String],
        env: &dyn Fn(&str) -> Option<String>,
        out: &mut Vec<ConfigError>,
    ) {
        let mut names = std::collections::HashSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = |k: &str| format!("webhooks.endpoints[{i}].{k}");
            let valid_name = !e.name.is_empty()
                && e.name.len() <= 64
                && e.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_name {
                out.push(err(at("name"), "1 to 64 letters, digits, `_` or `-`"));
            } else if !names.insert(e.name.as_str()) {
                out.push(err(at("name"), format!("`{}` names two endpoints", e.name)));
            }
            if let Err(m) = webhooks::parse_url(&e.url) {
                out.push(err(at("url"), m));
            }
            match e.secret(env) {
                None => out.push(err(
                    at("secret"),
                    "set `secret`, or `secret_env` to an environment variable that is set",
                )),
                Some(s) => {
                    if let Err(m) = webhooks::secret_key(&s) {
                        out.push(err(at("secret"), m));
                    }
                }
            }
            if e.events.is_empty() {
                out.push(err(at("events"), "name at least one event"));
            }
            for ev in &e.events {
                if EventKind::parse(ev).is_none() {
                    out.push(err(
                        at("events"),
                        format!("`{ev}` is not one of connect, disconnect, join, leave, occupied, vacated, message"),
                    ));
                }
            }
            for ns in &e.namespaces {
                if !namespaces.contains(ns) {
                    out.push(err(at("namespaces"), format!("no namespace `{ns}`")));
                }
            }
            if e.events.iter().any(|ev| ev == "message") && e.namespaces.is_empty() {
                out.push(err(
                    at("namespaces"),
                    "`message` events need the namespaces whose messages to send",
                ));
            }
            if !(1..=10_000).contains(&e.max_in_flight) {
                out.push(err(at("max_in_flight"), "must be 1 to 10000"));
            }
            if !(1..=100).contains(&e.attempts) {
                out.push(err(at("attempts"), "must be 1 to 100"));
            }
            if e.backoff_ms == 0 || e.max_backoff_ms < e.backoff_ms {
                out.push(err(
                    at("backoff_ms"),
                    "must be at least 1 and at most max_backoff_ms",
                ));
            }
            if !(10..=600_000).contains(&e.timeout_ms) {
                out.push(err(at("timeout_ms"), "must be 10 to 600000"));
            }
        }
    }

    /// The endpoints, as checked by `validate`.
    pub(super) fn config(&self, env: &dyn Fn(&str) -> Option<String>) -> WebhooksConfig {
        WebhooksConfig {
            endpoints: self
                .endpoints
                .iter()
                .filter_map(|e| {
                    Some(Endpoint {
                        name: e.name.clone(),
                        url: webhooks::parse_url(&e.url).ok()?,
                        secret: webhooks::secret_key(&e.secret(env)?).ok()?,
                        events: e
                            .events
                            .iter()
                            .filter_map(|s| EventKind::parse(s))
                            .collect(),
                        namespaces: e.namespaces.clone(),
                        max_in_flight: e.max_in_flight,
                        attempts: e.attempts,
                        backoff: Duration::from_millis(e.backoff_ms),
                        max_backoff: Duration::from_millis(e.max_backoff_ms),
                        timeout: Duration::from_millis(e.timeout_ms),
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Settings;

    const NS: &str = "[[namespace]]\nname = \"chat\"\n";

    #[test]
    fn an_endpoint_is_checked_and_converted() {
        let text = format!(
            "{NS}[[webhooks.endpoints]]\nname = \"app\"\nurl = \"http://127.0.0.1:9/x\"\n\
             secret = \"whsec_aGVsbG8=\"\nevents = [\"join\", \"message\"]\nnamespaces = [\"chat\"]\n"
        );
        let s = Settings::from_toml(&text, &|_| None).expect("valid");
        let cfg = s.edge_config().webhooks;
        assert_eq!(cfg.endpoints.len(), 1);
        let e = &cfg.endpoints[0];
        assert_eq!(e.secret, b"hello");
        assert_eq!((e.attempts, e.max_in_flight), (8, 16));
        assert_eq!(e.events.len(), 2);
    }

    #[test]
    fn bad_endpoints_are_reported_with_their_paths() {
        let text = format!(
            "{NS}[[webhooks.endpoints]]\nname = \"a b\"\nurl = \"ftp://x\"\n\
             events = [\"message\", \"typing\"]\nnamespaces = [\"nope\"]\nattempts = 0\n\
             [[webhooks.endpoints]]\nname = \"dup\"\nurl = \"http://h/x\"\nsecret = \"s\"\nevents = [\"connect\"]\n\
             [[webhooks.endpoints]]\nname = \"dup\"\nurl = \"http://h/x\"\nsecret_env = \"HERALD_TEST_UNSET_SECRET\"\nevents = [\"connect\"]\n"
        );
        let e = Settings::from_toml(&text, &|_| None).unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "webhooks.endpoints[0].name",
            "webhooks.endpoints[0].url",
            "webhooks.endpoints[0].secret",
            "webhooks.endpoints[0].events",
            "webhooks.endpoints[0].namespaces",
            "webhooks.endpoints[0].attempts",
            "webhooks.endpoints[2].name",
            "webhooks.endpoints[2].secret",
        ] {
            assert!(paths.contains(&p), "{p} not reported: {e}");
        }
        assert!(
            !paths.iter().any(|p| p.starts_with("webhooks.endpoints[1]")),
            "{e}"
        );
    }
}
