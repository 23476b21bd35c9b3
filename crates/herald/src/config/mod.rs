//! herald's configuration: one TOML file, `HERALD_*` environment variables on
//! top, command-line flags on top of that.
//!
//! Every setting has a default ([`Settings::default`], printed with comments
//! by `herald genconfig`). Unknown keys are errors. The environment is read
//! through a lookup function, so tests never touch the process environment:
//! key `section.name` is overridden by `HERALD_SECTION_NAME` (e.g.
//! `kafka.brokers` ← `HERALD_KAFKA_BROKERS`, `auth.hs256_secret` ←
//! `HERALD_AUTH_HS256_SECRET`). Lists in the environment are comma-separated.
//! Namespaces (an array of tables) come from the file only.
//!
//! This file holds the settings and their conversion into each crate's
//! configuration; `load` reads and layers the sources, `validate` checks
//! the values.

mod load;
mod validate;
mod webhooks;

pub use webhooks::WebhooksSettings;

pub use load::{ConfigError, ConfigErrors};

use std::collections::BTreeMap;
use std::time::Duration;

use herald_edge::{AccessRule, AuthConfig, EdgeConfig, Limits, NamespaceConfig};
use herald_log::LogConfig;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: Server,
    pub kafka: Kafka,
    pub limits: Limits,
    pub cache: Cache,
    pub auth: Auth,
    pub log: LogSettings,
    pub cluster: ClusterSettings,
    pub hooks: HooksSettings,
    pub webhooks: WebhooksSettings,
    #[serde(rename = "namespace")]
    pub namespaces: Vec<Namespace>,
}

/// `[cluster]`: how nodes see each other through the control topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    pub heartbeat_ms: u64,
    pub command_timeout_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        let e = EdgeConfig::default();
        ClusterSettings {
            heartbeat_ms: e.node_heartbeat.as_millis() as u64,
            command_timeout_ms: e.command_timeout.as_millis() as u64,
        }
    }
}

/// `[hooks]`: HTTP calls to the application on connect, subscribe and
/// publish (empty URL: no call).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSettings {
    pub connect_url: String,
    pub subscribe_url: String,
    pub publish_url: String,
    pub timeout_ms: u64,
    pub forward_headers: Vec<String>,
    pub fail_open: bool,
}

impl Default for HooksSettings {
    fn default() -> Self {
        HooksSettings {
            connect_url: String::new(),
            subscribe_url: String::new(),
            publish_url: String::new(),
            timeout_ms: EdgeConfig::default().hooks.timeout.as_millis() as u64,
            forward_headers: Vec::new(),
            fail_open: false,
        }
    }
}

/// `[log]`. The filter is `HERALD_LOG` (it applies before any file is read).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (one human-readable line per event) or `json` (one JSON object
    /// per line, with the span fields: `request_id` of HTTP requests).
    pub format: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: "text".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: String,
    pub heartbeat_secs: u64,
    pub idle_timeout_secs: u64,
    pub write_timeout_secs: u64,
    pub drain_delay_ms: u64,
    pub reconnect_jitter_ms: u64,
    pub shutdown_grace_secs: u64,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub header_read_timeout_secs: u64,
    pub demo_dir: String,
    pub admin_listen: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kafka {
    pub brokers: String,
    pub topic_prefix: String,
    pub replication: i32,
    pub min_insync_replicas: i32,
    pub fetch_wait_max_ms: u32,
    pub publish_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Extra librdkafka settings for every client (security, tuning).
    pub client: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    pub dedup_window_secs: u64,
    pub dedup_capacity: u64,
    pub recent_messages: usize,
    pub recent_bytes: usize,
    pub follow_grace_secs: u64,
    pub history_max_limit: usize,
    pub history_max_bytes: usize,
    pub history_max_scan: i64,
    pub cursor_flush_ms: u64,
    pub cursor_partitions: i32,
    pub cursor_cache_capacity: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub hs256_secret: String,
    pub public_key_file: String,
    pub jwks_file: String,
    pub jwks_url: String,
    pub jwks_refresh_secs: u64,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    pub api_key: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Namespace {
    pub name: String,
    pub partitions: i32,
    pub retention_ms: i64,
    pub subscribe: String,
    pub publish: String,
    pub history: String,
    pub max_message_bytes: usize,
    pub publish_rate: u32,
    pub durable: bool,
    pub presence: String,
    pub join_leave: bool,
    pub personal: bool,
    pub ephemeral: bool,
    pub conflate: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let e = EdgeConfig::default();
        let l = LogConfig::default();
        Settings {
            server: Server {
                listen: e.listen.to_string(),
                heartbeat_secs: e.heartbeat.as_secs(),
                idle_timeout_secs: e.idle_timeout.as_secs(),
                write_timeout_secs: e.write_timeout.as_secs(),
                drain_delay_ms: e.drain_delay.as_millis() as u64,
                reconnect_jitter_ms: e.reconnect_jitter.as_millis() as u64,
                shutdown_grace_secs: e.shutdown_grace.as_secs(),
                allowed_origins: e.allowed_origins.clone(),
                trusted_proxies: Vec::new(),
                header_read_timeout_secs: e.header_read_timeout.as_secs(),
                demo_dir: String::new(),
                admin_listen: String::new(),
            },
            kafka: Kafka {
                brokers: l.brokers,
                topic_prefix: l.topic_prefix,
                replication: l.replication,
                min_insync_replicas: l.min_insync_replicas,
                fetch_wait_max_ms: l.fetch_wait_max_ms,
                publish_timeout_ms: l.publish_timeout.as_millis() as u64,
                request_timeout_ms: l.request_timeout.as_millis() as u64,
                client: BTreeMap::new(),
            },
            limits: e.limits.clone(),
            cache: Cache {
                dedup_window_secs: e.dedup_window.as_secs(),
                dedup_capacity: e.dedup_capacity,
                recent_messages: e.recent_messages,
                recent_bytes: e.recent_bytes,
                follow_grace_secs: e.follow_grace.map_or(0, |g| g.as_secs()),
                history_max_limit: e.history_max_limit,
                history_max_bytes: e.history_max_bytes,
                history_max_scan: e.history_max_scan,
                cursor_flush_ms: e.cursor_flush_interval.as_millis() as u64,
                cursor_partitions: e.cursor_partitions,
                cursor_cache_capacity: e.cursor_cache_capacity,
            },
            auth: Auth {
                hs256_secret: String::new(),
                public_key_file: String::new(),
                jwks_file: String::new(),
                jwks_url: String::new(),
                jwks_refresh_secs: 300,
                issuer: String::new(),
                audience: String::new(),
                leeway_secs: 5,
                api_key: String::new(),
            },
            log: LogSettings::default(),
            cluster: ClusterSettings::default(),
            hooks: HooksSettings::default(),
            webhooks: WebhooksSettings::default(),
            namespaces: vec![Namespace::default()],
        }
    }
}

/// A section's default is its part of [`Settings::default`]: the defaults
/// are written once, there.
macro_rules! default_from_settings {
    ($($section:ident => $field:ident),* $(,)?) => {$(
        impl Default for $section {
            fn default() -> Self {
                Settings::default().$field
            }
        }
    )*};
}
default_from_settings!(Server => server, Kafka => kafka, Cache => cache, Auth => auth);

impl Default for Namespace {
    /// The default namespace: `chat`, 8 partitions, authenticated users only.
    fn default() -> Self {
        Namespace {
            name: "chat".into(),
            partitions: 8,
            retention_ms: 0,
            subscribe: "authenticated".into(),
            publish: "authenticated".into(),
            history: "authenticated".into(),
            max_message_bytes: 0,
            publish_rate: 0,
            durable: false,
            presence: "nobody".into(),
            join_leave: false,
            personal: false,
            ephemeral: false,
            conflate: false,
        }
    }
}

impl Settings {
    pub fn auth_config(&self) -> Result<AuthConfig, herald_edge::AuthError> {
        let file = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
        Ok(AuthConfig {
            hs256_secret: (!self.auth.hs256_secret.is_empty())
                .then(|| self.auth.hs256_secret.clone().into_bytes()),
            public_key_file: file(&self.auth.public_key_file),
            jwks_file: file(&self.auth.jwks_file),
            jwks_url: (!self.auth.jwks_url.is_empty()).then(|| self.auth.jwks_url.clone()),
            jwks_refresh: Duration::from_secs(self.auth.jwks_refresh_secs),
            issuer: (!self.auth.issuer.is_empty()).then(|| self.auth.issuer.clone()),
            audience: (!self.auth.audience.is_empty()).then(|| self.auth.audience.clone()),
            leeway: Duration::from_secs(self.auth.leeway_secs),
            api_key: (!self.auth.api_key.is_empty()).then(|| self.auth.api_key.clone()),
        })
    }

    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            brokers: self.kafka.brokers.clone(),
            topic_prefix: self.kafka.topic_prefix.clone(),
            fetch_wait_max_ms: self.kafka.fetch_wait_max_ms,
            publish_timeout: Duration::from_millis(self.kafka.publish_timeout_ms),
            request_timeout: Duration::from_millis(self.kafka.request_timeout_ms),
            replication: self.kafka.replication,
            min_insync_replicas: self.kafka.min_insync_replicas,
            overrides: self
                .kafka
                .client
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The edge settings. Call after [`Settings::validate`].
    pub fn edge_config(&self) -> EdgeConfig {
        let rule = |s: &str| s.parse::<AccessRule>().unwrap_or(AccessRule::Nobody);
        EdgeConfig {
            listen: self
                .server
                .listen
                .parse()
                .unwrap_or_else(|_| EdgeConfig::default().listen),
            namespaces: self
                .namespaces
                .iter()
                .map(|n| NamespaceConfig {
                    name: n.name.clone(),
                    partitions: n.partitions,
                    retention_ms: (n.retention_ms > 0).then_some(n.retention_ms),
                    subscribe: rule(&n.subscribe),
                    publish: rule(&n.publish),
                    history: rule(&n.history),
                    max_message_bytes: (n.max_message_bytes > 0).then_some(n.max_message_bytes),
                    publish_rate: (n.publish_rate > 0).then_some(n.publish_rate),
                    durable: n.durable,
                    presence: rule(&n.presence),
                    join_leave: n.join_leave,
                    personal: n.personal,
                    ephemeral: n.ephemeral,
                    conflate: n.conflate,
                })
                .collect(),
            limits: self.limits.clone(),
            heartbeat: Duration::from_secs(self.server.heartbeat_secs),
            idle_timeout: Duration::from_secs(self.server.idle_timeout_secs),
            write_timeout: Duration::from_secs(self.server.write_timeout_secs),
            dedup_window: Duration::from_secs(self.cache.dedup_window_secs),
            dedup_capacity: self.cache.dedup_capacity,
            recent_messages: self.cache.recent_messages,
            recent_bytes: self.cache.recent_bytes,
            node_heartbeat: Duration::from_millis(self.cluster.heartbeat_ms),
            command_timeout: Duration::from_millis(self.cluster.command_timeout_ms),
            follow_grace: (self.cache.follow_grace_secs > 0)
                .then(|| Duration::from_secs(self.cache.follow_grace_secs)),
            shutdown_grace: Duration::from_secs(self.server.shutdown_grace_secs),
            drain_delay: Duration::from_millis(self.server.drain_delay_ms),
            reconnect_jitter: Duration::from_millis(self.server.reconnect_jitter_ms),
            history_max_limit: self.cache.history_max_limit,
            history_max_bytes: self.cache.history_max_bytes,
            history_max_scan: self.cache.history_max_scan,
            history_concurrency: EdgeConfig::default().history_concurrency,
            cursor_flush_interval: Duration::from_millis(self.cache.cursor_flush_ms),
            cursor_partitions: self.cache.cursor_partitions,
            cursor_cache_capacity: self.cache.cursor_cache_capacity,
            allowed_origins: self.server.allowed_origins.clone(),
            demo_dir: (!self.server.demo_dir.is_empty())
                .then(|| std::path::PathBuf::from(&self.server.demo_dir)),
            // Checked by `validate`.
            trusted_proxies: self
                .server
                .trusted_proxies
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
            header_read_timeout: Duration::from_secs(self.server.header_read_timeout_secs),
            // Checked by `validate`.
            admin_listen: self.server.admin_listen.parse().ok(),
            // URLs checked by `validate`.
            hooks: herald_edge::hooks::HooksConfig {
                connect_url: herald_edge::hooks::parse_url(&self.hooks.connect_url).ok(),
                subscribe_url: herald_edge::hooks::parse_url(&self.hooks.subscribe_url).ok(),
                publish_url: herald_edge::hooks::parse_url(&self.hooks.publish_url).ok(),
                timeout: Duration::from_millis(self.hooks.timeout_ms),
                forward_headers: self
                    .hooks
                    .forward_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                fail_open: self.hooks.fail_open,
            },
            // Checked by `validate`.
            webhooks: self.webhooks.config(&|k| std::env::var(k).ok()),
        }
    }
    /// Every scalar key path, for documentation checks.
    #[cfg(test)]
    pub fn key_paths() -> Vec<String> {
        toml::Value::try_from(Settings::default())
            .map(|v| key_paths_of(&v))
            .unwrap_or_default()
    }
}

/// Every scalar key path of a configuration's TOML (`kafka.client` as one,
/// the namespaces' keys as `namespace[].key`).
#[cfg(test)]
fn key_paths_of(v: &toml::Value) -> Vec<String> {
    fn walk(path: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if p == "kafka.client" {
                        out.push(p);
                    } else {
                        walk(&p, v, out);
                    }
                }
            }
            toml::Value::Array(a) if path == "namespace" => {
                if let Some(first) = a.first() {
                    walk("namespace[]", first, out);
                }
            }
            _ => out.push(path.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

/// `herald genconfig`: the default configuration, every key commented.
pub const DEFAULT_CONFIG: &str = include_str!("../default-config.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_commented_default_file_is_the_defaults() {
        let s = Settings::from_toml(DEFAULT_CONFIG, &no_env).unwrap();
        assert_eq!(s, Settings::default());
        // Every key is written out (uncommented) in the template.
        let parsed: toml::Table = DEFAULT_CONFIG.parse().unwrap();
        let mut flat = key_paths_of(&toml::Value::Table(parsed));
        let mut want = Settings::key_paths();
        want.sort();
        flat.sort();
        assert_eq!(flat, want);
    }

    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../../../docs/configuration.md");
        for k in Settings::key_paths() {
            let leaf = k.rsplit('.').next().unwrap_or(&k);
            assert!(
                doc.contains(&format!("`{k}`")) || doc.contains(&format!("`{leaf}`")),
                "docs/configuration.md does not mention `{k}`"
            );
        }
    }

    #[test]
    fn reports_every_error_with_its_path() {
        // Wrong values (a zero queue, a bad name, an unknown rule).
        const BAD_VALUES: &str = r#"
            [limits]
            queue_messages = 0
            [[namespace]]
            name = "Chat"
            publish = "everyone"
        "#;
        let text = format!(
            "colour = \"blue\"\n[server]\nlisten = 8080\nspeed = 3\n{BAD_VALUES}\n\
             [[namespace]]\nname = \"user\"\npartitions = \"four\"\n"
        );
        let e = Settings::from_toml(&text, &no_env).unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"colour"), "{e}");
        assert!(paths.contains(&"server.listen"), "{e}");
        assert!(paths.contains(&"server.speed"), "{e}");
        assert!(paths.contains(&"namespace[1].partitions"), "{e}");
        // Shape errors come first; values are checked once the shape is right.
        let text = format!(
            "{BAD_VALUES}\n[[namespace]]\nname = \"ok\"\nsubscribe = \"grant\"\nretention_ms = -1\n"
        );
        let e = Settings::from_toml(&text, &no_env).unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "limits.queue_messages",
                "namespace[0].name",
                "namespace[0].publish",
                "namespace[1].retention_ms"
            ],
            "{e}"
        );
    }

    #[test]
    fn replication_settings_are_checked() {
        let paths = |text: &str| -> Vec<String> {
            match Settings::from_toml(text, &no_env) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.into_iter().map(|e| e.path).collect(),
            }
        };
        assert!(paths("[kafka]\nreplication = 3\nmin_insync_replicas = 2").is_empty());
        assert!(paths("[kafka]\nreplication = -1\nmin_insync_replicas = 2").is_empty());
        assert_eq!(paths("[kafka]\nreplication = 0"), ["kafka.replication"]);
        assert_eq!(
            paths("[kafka]\nmin_insync_replicas = -2"),
            ["kafka.min_insync_replicas"]
        );
        // More replicas in sync than there are replicas: nothing could be acked.
        assert_eq!(
            paths("[kafka]\nreplication = 2\nmin_insync_replicas = 3"),
            ["kafka.min_insync_replicas"]
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |k: &str| match k {
            "HERALD_KAFKA_BROKERS" => Some("k1:9092,k2:9092".to_string()),
            "HERALD_LIMITS_PUBLISH_RATE" => Some("5".to_string()),
            _ => None,
        };
        let s = Settings::from_toml("[kafka]\nbrokers = \"file:9092\"\n", &env).unwrap();
        assert_eq!(s.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(s.limits.publish_rate, 5);
        let bad = |k: &str| (k == "HERALD_LIMITS_PUBLISH_RATE").then(|| "fast".to_string());
        let e = Settings::from_toml("", &bad).unwrap_err();
        assert_eq!(
            e.0[0].path,
            "HERALD_LIMITS_PUBLISH_RATE (limits.publish_rate)"
        );
    }

    #[test]
    fn the_dev_config_is_valid_and_says_what_it_is() {
        let text = include_str!("../../../../infra/dev/herald.dev.toml");
        assert!(text.starts_with("# DEVELOPMENT CONFIGURATION - NOT FOR PRODUCTION"));
        let s = Settings::from_toml(text, &no_env).unwrap();
        assert_eq!(s.namespaces.len(), 2);
    }

    #[test]
    fn secure_by_default() {
        let s = Settings::default();
        assert!(s.namespaces.iter().all(|n| n.subscribe != "anonymous"
            && n.publish != "anonymous"
            && n.history != "anonymous"));
        assert!(
            s.auth.api_key.is_empty(),
            "the HTTP API is off until a key is set"
        );
    }
}
