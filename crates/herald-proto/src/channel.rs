//! Channel names: `namespace:name`.
//!
//! The namespace selects configuration (Kafka topic, partitions, limits); the
//! whole name is the Kafka record key, so it decides the partition.

use std::fmt;

/// Longest channel name accepted, in bytes. Kafka keys can be larger; this
/// keeps index entries and record keys small.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A validated channel name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel {
    full: String,
    /// Byte index of the `:` separating namespace and name.
    colon: usize,
}

/// Why a channel name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name must be `namespace:name`")]
    NoNamespace,
    #[error("namespace must be lowercase ASCII letters, digits, `_` or `-`")]
    BadNamespace,
    #[error("channel name contains a character outside [A-Za-z0-9_.:@/=+,-]")]
    BadCharacter,
}

impl Channel {
    /// Validates `name`. Namespaces are `[a-z0-9_-]+`; the rest of the name is
    /// non-empty and made of `[A-Za-z0-9_.:@/=+,-]` (URL- and log-friendly).
    pub fn parse(name: &str) -> Result<Self, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        let colon = name.find(':').ok_or(ChannelError::NoNamespace)?;
        let (ns, rest) = (&name[..colon], &name[colon + 1..]);
        if ns.is_empty()
            || !ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(ChannelError::BadNamespace);
        }
        if rest.is_empty() {
            return Err(ChannelError::NoNamespace);
        }
        if !rest.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'.' | b':' | b'@' | b'/' | b'=' | b'+' | b',' | b'-'
                )
        }) {
            return Err(ChannelError::BadCharacter);
        }
        Ok(Self {
            full: name.to_owned(),
            colon,
        })
    }

    /// The namespace, the part before the first `:`.
    pub fn namespace(&self) -> &str {
        &self.full[..self.colon]
    }

    /// The whole name, also the Kafka record key.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        let c = Channel::parse("chat:lobby").unwrap();
        assert_eq!(c.namespace(), "chat");
        assert_eq!(c.as_str(), "chat:lobby");
        assert_eq!(Channel::parse("user:42:inbox").unwrap().namespace(), "user");
        Channel::parse("a-b_c:x.y@z/1=2+3,4-5").unwrap();
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(Channel::parse(""), Err(ChannelError::Empty));
        assert_eq!(Channel::parse("lobby"), Err(ChannelError::NoNamespace));
        assert_eq!(Channel::parse("chat:"), Err(ChannelError::NoNamespace));
        assert_eq!(Channel::parse(":x"), Err(ChannelError::BadNamespace));
        assert_eq!(Channel::parse("Chat:x"), Err(ChannelError::BadNamespace));
        assert_eq!(Channel::parse("chat:a b"), Err(ChannelError::BadCharacter));
        assert_eq!(Channel::parse("chat:é"), Err(ChannelError::BadCharacter));
        let long = format!("chat:{}", "x".repeat(MAX_CHANNEL_LEN));
        assert_eq!(Channel::parse(&long), Err(ChannelError::TooLong));
    }
}
