//! herald's end-to-end tests against a real broker, in one test binary: one
//! build and link instead of one per file, and the tests run in parallel
//! (each starts its own herald processes on free ports, with its own topic
//! prefix). The fault suites that stop brokers and kill nodes (`faults`,
//! `cluster`, `chaos`) are binaries of their own, run one test at a time.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod analytics;
mod balancer;
mod batches;
mod browser;
mod config;
mod conformance;
mod core;
mod cursors;
mod deploy;
mod docs;
mod ephemeral;
mod epochs;
mod fallback;
mod filters;
mod following;
mod helm;
mod history;
mod hooks;
mod limits;
mod loadtest_smoke;
mod observability;
mod offsets;
mod partition;
mod raw_topic;
mod replay;
mod retention;
mod revocation;
mod security;
mod webhooks;
mod wire_schema;
