//! A member of a channel's presence, as `presence`, `join` and `leave`
//! frames carry it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A member of a channel's presence: one subscribed connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Member {
    /// `{node}/{connection}`: unique in the cluster.
    pub conn: String,
    /// The token's `sub`; absent for an anonymous connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The connection's `client_id`, when it gave one: a token's `sub`, or
    /// a one-way digest of an anonymous client's (its cursors' credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The display name the connection gave (`?name=`): public, unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The token's `info` claim, as is.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "info_from_value"
    )]
    pub info: Option<Box<RawValue>>,
}

/// `info` read through a JSON value: a [`RawValue`] cannot be read inside an
/// internally tagged frame (serde buffers its content first), which is how
/// clients read `presence`, `join` and `leave`.
fn info_from_value<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    v.map(|v| serde_json::value::to_raw_value(&v).map_err(serde::de::Error::custom))
        .transpose()
}

impl PartialEq for Member {
    fn eq(&self, o: &Member) -> bool {
        (&self.conn, &self.user, &self.client, &self.name) == (&o.conn, &o.user, &o.client, &o.name)
            && self.info.as_ref().map(|r| r.get()) == o.info.as_ref().map(|r| r.get())
    }
}
