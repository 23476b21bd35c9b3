//! Tags on a message and a subscription's filter over them.
//!
//! A publish may carry `tags`, an object of string values
//! (`{"kind": "goal", "team": "home"}`), stored in the envelope and shown on
//! the `message` frame. A `subscribe` may carry a `filter`; the node
//! evaluates it against each message's tags before queueing the message for
//! that subscriber, so messages it does not match never reach the
//! connection. A filter is an expression:
//!
//! - `{"key": K, "eq": V}` / `{"key": K, "ne": V}`: the tag K is (is not) V;
//!   a missing tag is not equal to anything;
//! - `{"key": K, "in": [V, ...]}`: the tag K is one of the values;
//! - `{"key": K, "exists": true | false}`: the tag K is (is not) present;
//! - `{"and": [F, ...]}`, `{"or": [F, ...]}`, `{"not": F}`.
//!
//! Both are bounded ([`MAX_TAGS`], [`MAX_TAG_KEY`], [`MAX_TAG_VALUE`],
//! [`MAX_FILTER_NODES`], [`MAX_FILTER_DEPTH`]) so a filter costs a subscriber
//! a bounded amount of work per message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// At most this many tags on a message.
pub const MAX_TAGS: usize = 16;
/// A tag's key: 1 to this many bytes.
pub const MAX_TAG_KEY: usize = 64;
/// A tag's value: at most this many bytes.
pub const MAX_TAG_VALUE: usize = 256;
/// At most this many expressions (operators and comparisons) in a filter,
/// counting each value of an `in` as one.
pub const MAX_FILTER_NODES: usize = 64;
/// At most this many levels of `and` / `or` / `not`.
pub const MAX_FILTER_DEPTH: usize = 8;

/// A message's tags: key → value, in key order.
pub type Tags = BTreeMap<String, String>;

/// Checks a publish's tags against the bounds; the reason when they break one.
pub fn check_tags(tags: &Tags) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} `tags`"));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > MAX_TAG_KEY {
            return Err(format!("a tag key is 1 to {MAX_TAG_KEY} bytes"));
        }
        if v.len() > MAX_TAG_VALUE {
            return Err(format!(
                "the value of tag `{k}` is over {MAX_TAG_VALUE} bytes"
            ));
        }
    }
    Ok(())
}

/// A subscription's filter, checked against the bounds when decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    Exists(String, bool),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

/// The JSON form, one object per expression; exactly one operator in each.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eq: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ne: Option<String>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    one_of: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exists: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    and: Option<Vec<FilterBody>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    or: Option<Vec<FilterBody>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not: Option<Box<FilterBody>>,
}

impl Filter {
    /// The filter of its JSON form, or why it is not one. serde's own
    /// recursion limit (128) bounds the nesting while parsing; the depth
    /// and size bounds are checked here.
    pub fn from_body(body: FilterBody) -> Result<Filter, String> {
        let mut nodes = 0;
        Self::build(body, 1, &mut nodes)
    }

    fn build(b: FilterBody, depth: usize, nodes: &mut usize) -> Result<Filter, String> {
        *nodes += 1;
        if depth > MAX_FILTER_DEPTH {
            return Err(format!(
                "a filter is at most {MAX_FILTER_DEPTH} levels deep"
            ));
        }
        let ops = [
            b.eq.is_some(),
            b.ne.is_some(),
            b.one_of.is_some(),
            b.exists.is_some(),
            b.and.is_some(),
            b.or.is_some(),
            b.not.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if ops != 1 {
            return Err(
                "each filter expression has exactly one of `eq`, `ne`, `in`, `exists`, `and`, `or`, `not`"
                    .into(),
            );
        }
        let compares = b.and.is_none() && b.or.is_none() && b.not.is_none();
        let key = match (b.key, compares) {
            (Some(k), true) if !k.is_empty() && k.len() <= MAX_TAG_KEY => Some(k),
            (Some(_), true) => return Err(format!("a filter `key` is 1 to {MAX_TAG_KEY} bytes")),
            (None, true) => return Err("`eq`, `ne`, `in` and `exists` need a `key`".into()),
            (Some(_), false) => return Err("`and`, `or` and `not` take no `key`".into()),
            (None, false) => None,
        };
        let f = match (key, b.eq, b.ne, b.one_of, b.exists) {
            (Some(k), Some(v), ..) => Filter::Eq(k, v),
            (Some(k), _, Some(v), ..) => Filter::Ne(k, v),
            (Some(k), _, _, Some(vs), _) => {
                *nodes += vs.len();
                if vs.is_empty() {
                    return Err("`in` needs at least one value".into());
                }
                Filter::In(k, vs)
            }
            (Some(k), _, _, _, Some(e)) => Filter::Exists(k, e),
            _ => {
                let list = |fs: Vec<FilterBody>, nodes: &mut usize| {
                    if fs.is_empty() {
                        return Err("`and` and `or` need at least one expression".to_string());
                    }
                    fs.into_iter()
                        .map(|f| Self::build(f, depth + 1, nodes))
                        .collect::<Result<Vec<_>, _>>()
                };
                match (b.and, b.or, b.not) {
                    (Some(fs), ..) => Filter::And(list(fs, nodes)?),
                    (_, Some(fs), _) => Filter::Or(list(fs, nodes)?),
                    (_, _, Some(f)) => Filter::Not(Box::new(Self::build(*f, depth + 1, nodes)?)),
                    // One operator was counted above.
                    _ => return Err("empty filter expression".into()),
                }
            }
        };
        if *nodes > MAX_FILTER_NODES {
            return Err(format!(
                "a filter has at most {MAX_FILTER_NODES} expressions and `in` values"
            ));
        }
        Ok(f)
    }

    /// Whether a message with `tags` (none: `None`) passes.
    pub fn matches(&self, tags: Option<&Tags>) -> bool {
        let get = |k: &str| tags.and_then(|t| t.get(k)).map(String::as_str);
        match self {
            Filter::Eq(k, v) => get(k) == Some(v.as_str()),
            Filter::Ne(k, v) => get(k) != Some(v.as_str()),
            Filter::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Filter::Exists(k, e) => get(k).is_some() == *e,
            Filter::And(fs) => fs.iter().all(|f| f.matches(tags)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(tags)),
            Filter::Not(f) => !f.matches(tags),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Filter, String> {
        let body: FilterBody = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Filter::from_body(body)
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_operator_matches_as_documented() {
        let t = tags(&[("kind", "goal"), ("team", "home")]);
        let cases = [
            (r#"{"key":"kind","eq":"goal"}"#, true),
            (r#"{"key":"kind","eq":"card"}"#, false),
            (r#"{"key":"kind","ne":"card"}"#, true),
            (r#"{"key":"missing","ne":"x"}"#, true),
            (r#"{"key":"missing","eq":"x"}"#, false),
            (r#"{"key":"kind","in":["card","goal"]}"#, true),
            (r#"{"key":"kind","in":["card"]}"#, false),
            (r#"{"key":"team","exists":true}"#, true),
            (r#"{"key":"team","exists":false}"#, false),
            (
                r#"{"and":[{"key":"kind","eq":"goal"},{"key":"team","eq":"away"}]}"#,
                false,
            ),
            (
                r#"{"or":[{"key":"kind","eq":"card"},{"key":"team","eq":"home"}]}"#,
                true,
            ),
            (r#"{"not":{"key":"kind","eq":"goal"}}"#, false),
        ];
        for (json, want) in cases {
            let f = parse(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(f.matches(Some(&t)), want, "{json}");
        }
        // An untagged message: only `ne`, `exists: false` and `not` pass.
        assert!(!parse(r#"{"key":"kind","eq":"goal"}"#)
            .unwrap()
            .matches(None));
        assert!(parse(r#"{"key":"kind","exists":false}"#)
            .unwrap()
            .matches(None));
    }

    #[test]
    fn malformed_or_oversized_filters_are_refused_with_a_reason() {
        for json in [
            r#"{}"#,
            r#"{"key":"a"}"#,
            r#"{"key":"a","eq":"x","ne":"y"}"#,
            r#"{"eq":"x"}"#,
            r#"{"key":"","eq":"x"}"#,
            r#"{"key":"a","in":[]}"#,
            r#"{"and":[]}"#,
            r#"{"key":"a","and":[{"key":"a","eq":"x"}]}"#,
            r#"{"key":"a","eq":1}"#,
            r#"{"key":"a","like":"x"}"#,
        ] {
            assert!(parse(json).is_err(), "{json} was accepted");
        }
        let mut deep = r#"{"key":"a","eq":"x"}"#.to_string();
        for _ in 0..MAX_FILTER_DEPTH {
            deep = format!(r#"{{"not":{deep}}}"#);
        }
        assert!(parse(&deep).unwrap_err().contains("levels deep"));
        let values: Vec<String> = (0..MAX_FILTER_NODES).map(|i| format!("\"v{i}\"")).collect();
        let wide = format!(r#"{{"key":"a","in":[{}]}}"#, values.join(","));
        assert!(parse(&wide).unwrap_err().contains("at most"));
    }

    #[test]
    fn tags_are_bounded() {
        assert!(check_tags(&tags(&[("a", "b")])).is_ok());
        assert!(check_tags(&tags(&[("", "b")])).is_err());
        let long = "x".repeat(MAX_TAG_VALUE + 1);
        assert!(check_tags(&tags(&[("a", &long)])).is_err());
        let many: Tags = (0..=MAX_TAGS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(check_tags(&many).is_err());
    }
}
