//! [`Text`]: a serialised frame, immutable and shared. One buffer per
//! message is written to every subscriber: cloning it is a reference count,
//! and a transport hands the same bytes to its socket (the WebSocket layer
//! takes them without a copy).

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// UTF-8 text in a shared buffer. Only made from a `String` or a `&str`,
/// so it is always valid UTF-8.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    pub fn as_str(&self) -> &str {
        // SAFETY: built only from `String` / `&str` (see the `From`s).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The shared bytes (valid UTF-8), for a transport that writes them.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_buffer() {
        let a = Text::from(String::from("{\"type\":\"message\"}"));
        let b = a.clone();
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        assert_eq!(&*b, "{\"type\":\"message\"}");
        assert_eq!(a.bytes().as_ptr(), a.as_str().as_ptr());
    }
}
