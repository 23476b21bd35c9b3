//! Checking a configuration's values.

use std::net::SocketAddr;

use herald_edge::{AccessRule, NamespaceConfig};

use super::load::err;
use super::{ConfigError, Settings};

impl Settings {
    /// Checks values: addresses parse, rules are known, names are valid,
    /// key files exist and parse.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut out = Vec::new();
        if self.server.listen.parse::<SocketAddr>().is_err() {
            out.push(err(
                "server.listen",
                "must be an address like 127.0.0.1:8080",
            ));
        }
        if !(100..=60_000).contains(&self.cluster.heartbeat_ms) {
            out.push(err("cluster.heartbeat_ms", "must be 100 to 60000"));
        }
        if !(100..=600_000).contains(&self.cluster.command_timeout_ms) {
            out.push(err("cluster.command_timeout_ms", "must be 100 to 600000"));
        }
        for (path, url) in [
            ("hooks.connect_url", &self.hooks.connect_url),
            ("hooks.subscribe_url", &self.hooks.subscribe_url),
            ("hooks.publish_url", &self.hooks.publish_url),
        ] {
            if url.is_empty() {
                continue;
            }
            if let Err(e) = herald_edge::hooks::parse_url(url) {
                out.push(err(path, e));
            }
        }
        if !(10..=60_000).contains(&self.hooks.timeout_ms) {
            out.push(err("hooks.timeout_ms", "must be 10 to 60000"));
        }
        for h in &self.hooks.forward_headers {
            if !herald_edge::hooks::is_header_name(h) {
                out.push(err(
                    "hooks.forward_headers",
                    format!("`{h}` is not a header name"),
                ));
            }
        }
        let namespaces: Vec<String> = self.namespaces.iter().map(|n| n.name.clone()).collect();
        self.webhooks
            .validate(&namespaces, &|k| std::env::var(k).ok(), &mut out);
        if !["text", "json"].contains(&self.log.format.as_str()) {
            out.push(err("log.format", "must be \"text\" or \"json\""));
        }
        if self.kafka.brokers.trim().is_empty() {
            out.push(err("kafka.brokers", "must not be empty"));
        }
        for (path, v) in [
            ("kafka.replication", self.kafka.replication),
            ("kafka.min_insync_replicas", self.kafka.min_insync_replicas),
        ] {
            if v == 0 || v < -1 {
                out.push(err(path, "must be -1 (the broker's default) or at least 1"));
            }
        }
        if self.kafka.replication > 0 && self.kafka.min_insync_replicas > self.kafka.replication {
            out.push(err(
                "kafka.min_insync_replicas",
                "must not exceed kafka.replication (no publish could ever be acked)",
            ));
        }
        if self.kafka.topic_prefix.is_empty()
            || !self
                .kafka
                .topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            out.push(err(
                "kafka.topic_prefix",
                "must be non-empty ASCII letters, digits, `.`, `_` or `-`",
            ));
        }
        for (path, v) in [
            ("limits.queue_messages", self.limits.queue_messages),
            ("limits.queue_bytes", self.limits.queue_bytes),
            ("limits.max_message_bytes", self.limits.max_message_bytes),
            ("limits.max_frame_bytes", self.limits.max_frame_bytes),
            ("limits.read_buffer_bytes", self.limits.read_buffer_bytes),
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip,
            ),
            ("limits.max_subscriptions", self.limits.max_subscriptions),
            (
                "limits.max_inflight_publishes",
                self.limits.max_inflight_publishes,
            ),
            ("cache.history_max_limit", self.cache.history_max_limit),
            ("cache.history_max_bytes", self.cache.history_max_bytes),
        ] {
            if v == 0 {
                out.push(err(path, "must be at least 1"));
            }
        }
        if self.cache.cursor_partitions < 1 {
            out.push(err("cache.cursor_partitions", "must be at least 1"));
        }
        if self.cache.history_max_scan < 1 {
            out.push(err("cache.history_max_scan", "must be at least 1"));
        }
        if self.cache.cursor_flush_ms < 10 {
            out.push(err("cache.cursor_flush_ms", "must be at least 10"));
        }
        if self.server.heartbeat_secs == 0 {
            out.push(err("server.heartbeat_secs", "must be at least 1"));
        }
        for (i, p) in self.server.trusted_proxies.iter().enumerate() {
            if p.parse::<std::net::IpAddr>().is_err() {
                out.push(err(
                    format!("server.trusted_proxies[{i}]"),
                    format!("`{p}` is not an IP address"),
                ));
            }
        }
        for (i, o) in self.server.allowed_origins.iter().enumerate() {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                out.push(err(
                    format!("server.allowed_origins[{i}]"),
                    format!("`{o}` is not an origin like https://app.example.com (scheme, host, optional port, no path)"),
                ));
            }
        }
        if self.server.header_read_timeout_secs == 0 {
            out.push(err("server.header_read_timeout_secs", "must be at least 1"));
        }
        if !self.server.admin_listen.is_empty()
            && self
                .server
                .admin_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            out.push(err(
                "server.admin_listen",
                "must be an address with a port, e.g. 127.0.0.1:9090 (or empty: none)",
            ));
        }
        if self.limits.presence_max_members == 0 {
            out.push(err("limits.presence_max_members", "must be at least 1"));
        }
        if self.limits.max_query_bytes < 256 {
            out.push(err("limits.max_query_bytes", "must be at least 256"));
        }
        if self.limits.auth_per_minute == 0 {
            out.push(err("limits.auth_per_minute", "must be at least 1"));
        }
        if self.server.write_timeout_secs == 0 {
            out.push(err("server.write_timeout_secs", "must be at least 1"));
        }
        if !self.auth.hs256_secret.is_empty() && self.auth.hs256_secret.len() < 32 {
            out.push(err(
                "auth.hs256_secret",
                "must be at least 32 bytes (a short HMAC secret can be brute-forced)",
            ));
        }
        if !(1..=86_400).contains(&self.auth.jwks_refresh_secs) {
            out.push(err(
                "auth.jwks_refresh_secs",
                "must be 1 to 86400 (seconds between two fetches of auth.jwks_url)",
            ));
        }
        if !self.auth.api_key.is_empty() && self.auth.api_key.len() < 16 {
            out.push(err("auth.api_key", "must be at least 16 characters"));
        }
        if let Err(e) = self.auth_config().and_then(|a| herald_edge::Auth::new(&a)) {
            out.push(err(e.path(), e.to_string()));
        }
        if self.namespaces.is_empty() {
            out.push(err("namespace", "at least one namespace is needed"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let p = |k: &str| format!("namespace[{i}].{k}");
            if let Err(e) =
                format!("{}={}", ns.name, ns.partitions.max(1)).parse::<NamespaceConfig>()
            {
                out.push(err(p("name"), e));
            }
            if !seen.insert(ns.name.clone()) {
                out.push(err(
                    p("name"),
                    format!("namespace `{}` is defined twice", ns.name),
                ));
            }
            if ns.partitions < 1 {
                out.push(err(p("partitions"), "must be at least 1"));
            }
            if ns.retention_ms < 0 {
                out.push(err(p("retention_ms"), "must be 0 (broker default) or more"));
            }
            for (k, v) in [
                ("subscribe", &ns.subscribe),
                ("publish", &ns.publish),
                ("history", &ns.history),
                ("presence", &ns.presence),
            ] {
                if let Err(e) = v.parse::<AccessRule>() {
                    out.push(err(p(k), e));
                }
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }
}
