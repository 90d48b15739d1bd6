//! Channel names and namespaces.
//!
//! A channel name is `name` or `ns:name`; the part before the first `:` selects the
//! namespace whose options apply (`default` when there is none). A name part that starts
//! with `#` is a personal channel: `#alice` or `ns:#alice` only for user `alice`.

use std::collections::HashMap;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Name of the namespace for channels without a `ns:` prefix.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Options of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceOptions {
    /// Clients may publish.
    pub allow_publish: bool,
    /// Anonymous clients may subscribe.
    pub allow_anonymous: bool,
    /// Subscribing needs a subscription token.
    pub private: bool,
    /// Presence is kept and may be queried.
    pub presence: bool,
    /// Join and leave pushes are sent.
    pub join_leave: bool,
    /// History kept per channel (0 size = none).
    pub history: crate::history::HistoryPolicy,
    /// Full queues skip publications instead of disconnecting the client.
    pub lossy: bool,
}

impl NamespaceOptions {
    /// The hub's view of these options.
    pub fn channel_options(&self) -> crate::hub::ChannelOptions {
        crate::hub::ChannelOptions {
            join_leave: self.join_leave,
            history: self.history,
            lossy: self.lossy,
        }
    }
}

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Empty, too long, or with control characters.
    #[error("invalid channel name")]
    Invalid,
    /// The namespace is not configured.
    #[error("unknown channel namespace `{0}`")]
    UnknownNamespace(String),
}

/// A resolved channel: its options and, for personal channels, the one user allowed.
#[derive(Debug, Clone, Copy)]
pub struct ChannelRules<'a> {
    /// The namespace's options.
    pub options: &'a NamespaceOptions,
    /// `Some(user)` for a personal channel `#user`.
    pub owner: Option<&'a str>,
}

/// The configured namespaces.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    map: HashMap<String, NamespaceOptions>,
    /// Options for namespaces that are not configured (dev mode); `None` refuses them.
    fallback: Option<NamespaceOptions>,
}

impl Namespaces {
    /// Namespaces from a map of names to options, with optional options for any other name.
    pub fn new(map: HashMap<String, NamespaceOptions>, fallback: Option<NamespaceOptions>) -> Self {
        Self { map, fallback }
    }

    /// Checks a channel name and finds its rules.
    pub fn resolve<'a>(&'a self, channel: &'a str) -> Result<ChannelRules<'a>, ChannelError> {
        if channel.is_empty()
            || channel.len() > MAX_CHANNEL_LEN
            || channel.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ChannelError::Invalid);
        }
        let (ns, name) = match channel.split_once(':') {
            Some((ns, name)) => (ns, name),
            None => (DEFAULT_NAMESPACE, channel),
        };
        if name.is_empty() {
            return Err(ChannelError::Invalid);
        }
        let options = self
            .map
            .get(ns)
            .or(self.fallback.as_ref())
            .ok_or_else(|| ChannelError::UnknownNamespace(ns.to_string()))?;
        let owner = match name.strip_prefix('#') {
            Some("") => return Err(ChannelError::Invalid),
            Some(user) => Some(user),
            None => None,
        };
        Ok(ChannelRules { options, owner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces(fallback: bool) -> Namespaces {
        let mut map = HashMap::new();
        map.insert(DEFAULT_NAMESPACE.to_string(), NamespaceOptions::default());
        map.insert(
            "chat".to_string(),
            NamespaceOptions {
                allow_publish: true,
                ..Default::default()
            },
        );
        Namespaces::new(map, fallback.then(NamespaceOptions::default))
    }

    #[test]
    fn resolves_namespaces() {
        let ns = namespaces(false);
        assert!(
            ns.resolve("chat:lobby")
                .expect("chat")
                .options
                .allow_publish
        );
        assert!(!ns.resolve("lobby").expect("default").options.allow_publish);
        assert_eq!(
            ns.resolve("news:x").expect_err("unknown"),
            ChannelError::UnknownNamespace("news".into())
        );
        assert!(namespaces(true).resolve("news:x").is_ok());
    }

    #[test]
    fn refuses_bad_names() {
        let ns = namespaces(true);
        for bad in ["", "chat:", "a b", "x\u{0}", "#", "chat:#"] {
            assert_eq!(
                ns.resolve(bad).expect_err(bad),
                ChannelError::Invalid,
                "{bad:?}"
            );
        }
        assert_eq!(
            ns.resolve(&"x".repeat(256)).expect_err("long"),
            ChannelError::Invalid
        );
    }

    #[test]
    fn personal_channels_name_their_owner() {
        let ns = namespaces(false);
        assert_eq!(ns.resolve("#alice").expect("personal").owner, Some("alice"));
        assert_eq!(
            ns.resolve("chat:#bob").expect("personal").owner,
            Some("bob")
        );
        assert_eq!(ns.resolve("chat:lobby").expect("public").owner, None);
    }
}
