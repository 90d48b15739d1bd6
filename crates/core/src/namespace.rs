//! Channel names and namespaces.
//!
//! A channel name is `name` or `ns:name`; the part before the first `:` selects the
//! namespace whose options apply (`default` when there is none). A name part that starts
//! with `#` is a personal channel: `#alice` or `ns:#alice` only for user `alice`.
//!
//! [`validate_channel_name`] is the one syntax check for every entry point (WebSocket
//! commands and the HTTP API); [`CHANNEL_NAME_PATTERN`] states the same rule as a regular
//! expression for the OpenAPI document.

use std::collections::HashMap;

/// Longest channel name accepted, in characters (Unicode scalar values, as JSON Schema's
/// `maxLength` counts them), so at most 4 * 255 bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// The characters a channel name may not hold, as a regular expression character range:
/// the same set as [`channel_char`] refuses.
macro_rules! not_channel_chars {
    () => {
        "\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
    };
}

/// The syntax of a channel name as an ECMA-262 / Python regular expression (the OpenAPI
/// document's `pattern`); with the length limit it accepts exactly what
/// [`validate_channel_name`] accepts. A namespace part (no `:`, not empty) and `:`, or
/// none; then a name part that is not empty and not `#` alone; no control or whitespace
/// characters anywhere. Without a namespace the name has no `:`. It ends in `(?![\s\S])`
/// rather than `$`, which Python's `re` (and so schemathesis) lets match before a final
/// newline.
pub const CHANNEL_NAME_PATTERN: &str = concat!(
    "^(?:[^",
    not_channel_chars!(),
    ":]+:",
    "(?:#[^",
    not_channel_chars!(),
    "]+|[^",
    not_channel_chars!(),
    "#][^",
    not_channel_chars!(),
    "]*)",
    "|(?:#[^",
    not_channel_chars!(),
    ":]+|[^",
    not_channel_chars!(),
    "#:][^",
    not_channel_chars!(),
    ":]*))(?![\\s\\S])"
);

/// Whether `c` may appear in a channel name: anything but control characters (Unicode
/// `Cc`) and whitespace (`White_Space`), listed out so that [`CHANNEL_NAME_PATTERN`] can
/// say the same.
fn channel_char(c: char) -> bool {
    !matches!(c,
        '\u{0}'..='\u{20}'
        | '\u{7f}'..='\u{a0}'
        | '\u{1680}'
        | '\u{2000}'..='\u{200a}'
        | '\u{2028}'
        | '\u{2029}'
        | '\u{202f}'
        | '\u{205f}'
        | '\u{3000}')
}

/// Checks the syntax of a channel name (see the module documentation); the namespace is
/// not looked up.
pub fn validate_channel_name(channel: &str) -> Result<(), ChannelError> {
    // Every publish and subscribe checks its channel: ASCII names (nearly all) take a
    // byte loop; the same rule as `channel_char` for ASCII.
    let chars_ok = if channel.is_ascii() {
        channel.len() <= MAX_CHANNEL_LEN && channel.bytes().all(|b| b > b' ' && b != 0x7f)
    } else {
        channel.chars().count() <= MAX_CHANNEL_LEN && channel.chars().all(channel_char)
    };
    if channel.is_empty() || !chars_ok {
        return Err(ChannelError::Invalid);
    }
    let name = match channel.split_once(':') {
        Some(("", _)) => return Err(ChannelError::Invalid),
        Some((_, name)) => name,
        None => channel,
    };
    if name.is_empty() || name == "#" {
        return Err(ChannelError::Invalid);
    }
    Ok(())
}

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
    /// Subscribers may ask for publications as deltas (`delta: "fossil"`).
    pub allow_delta: bool,
    /// The namespace's metric slot: set by [`Namespaces::new`] (whatever the caller
    /// put here), it picks the namespace's series of the per-namespace metrics.
    pub index: u16,
}

impl NamespaceOptions {
    /// The hub's view of these options.
    pub fn channel_options(&self) -> crate::hub::ChannelOptions {
        crate::hub::ChannelOptions {
            join_leave: self.join_leave,
            history: self.history,
            lossy: self.lossy,
            presence: self.presence,
            namespace: self.index,
        }
    }
}

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Empty, too long, with control or whitespace characters, an empty namespace or
    /// name part, or the name `#` alone.
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

/// The `namespace` label of the metrics of channels whose namespace is not configured
/// (dev mode opens every namespace): one series for all of them, so that clients cannot
/// grow the metrics by inventing namespaces. No configured namespace can be named so (a
/// namespace name has no `:`).
pub const OTHER_NAMESPACE_LABEL: &str = ":other";

/// The configured namespaces.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    map: HashMap<String, NamespaceOptions>,
    /// Options for namespaces that are not configured (dev mode); `None` refuses them.
    fallback: Option<NamespaceOptions>,
    /// The configured names in metric-slot order (sorted); the fallback's slot is next.
    names: Vec<String>,
}

impl Namespaces {
    /// Namespaces from a map of names to options, with optional options for any other name.
    /// Each namespace gets a metric slot (its `index`): the configured ones in name
    /// order, then the fallback's.
    pub fn new(
        mut map: HashMap<String, NamespaceOptions>,
        mut fallback: Option<NamespaceOptions>,
    ) -> Self {
        let mut names: Vec<String> = map.keys().cloned().collect();
        names.sort_unstable();
        for (i, name) in names.iter().enumerate() {
            if let Some(options) = map.get_mut(name) {
                options.index = u16::try_from(i).unwrap_or(u16::MAX);
            }
        }
        if let Some(options) = &mut fallback {
            options.index = u16::try_from(names.len()).unwrap_or(u16::MAX);
        }
        Self {
            map,
            fallback,
            names,
        }
    }

    /// How many metric slots the namespaces use: one per configured namespace, plus one
    /// shared by every unconfigured namespace when they are allowed (dev mode).
    pub fn metric_slots(&self) -> usize {
        self.names.len() + usize::from(self.fallback.is_some())
    }

    /// The `namespace` label of each metric slot, in slot order (not escaped).
    pub fn metric_labels(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .map(String::as_str)
            .chain(self.fallback.as_ref().map(|_| OTHER_NAMESPACE_LABEL))
    }

    /// Checks a channel name and finds its rules.
    pub fn resolve<'a>(&'a self, channel: &'a str) -> Result<ChannelRules<'a>, ChannelError> {
        validate_channel_name(channel)?;
        let (ns, name) = match channel.split_once(':') {
            Some((ns, name)) => (ns, name),
            None => (DEFAULT_NAMESPACE, channel),
        };
        let options = self
            .map
            .get(ns)
            .or(self.fallback.as_ref())
            .ok_or_else(|| ChannelError::UnknownNamespace(ns.to_string()))?;
        // `#` alone was refused by the syntax check.
        let owner = name.strip_prefix('#');
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
    fn namespaces_get_metric_slots_in_name_order() {
        let ns = namespaces(true);
        assert_eq!(ns.metric_slots(), 3);
        assert_eq!(
            ns.metric_labels().collect::<Vec<_>>(),
            ["chat", "default", OTHER_NAMESPACE_LABEL]
        );
        let slot = |channel: &str| ns.resolve(channel).expect(channel).options.index;
        assert_eq!(slot("chat:a"), 0);
        assert_eq!(slot("a"), 1);
        assert_eq!(slot("news:a"), 2);
        assert_eq!(slot("sport:a"), 2);
        assert_eq!(
            ns.resolve("chat:a")
                .expect("chat")
                .options
                .channel_options()
                .namespace,
            0
        );
        let closed = namespaces(false);
        assert_eq!(closed.metric_slots(), 2);
        assert_eq!(
            closed.metric_labels().collect::<Vec<_>>(),
            ["chat", "default"]
        );
    }

    #[test]
    fn refuses_bad_names() {
        let ns = namespaces(true);
        for bad in [
            "",
            "chat:",
            "a b",
            "x\u{0}",
            "#",
            "chat:#",
            ":x",
            "x\u{a0}y",
            "x\u{3000}",
        ] {
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
        // The limit counts characters, as the OpenAPI document's `maxLength` does.
        assert!(ns.resolve(&"é".repeat(255)).is_ok());
        assert!(ns.resolve(&"é".repeat(256)).is_err());
        for good in ["a", "chat:a:b", "chat:##", "#a", "ns:#a", "a-b_c.d/é", "@"] {
            assert!(ns.resolve(good).is_ok(), "{good:?}");
        }
    }

    /// The explicit character list is exactly "not control, not whitespace".
    #[test]
    fn channel_chars_are_the_non_control_non_whitespace_ones() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            assert_eq!(
                channel_char(c),
                !(c.is_control() || c.is_whitespace()),
                "{:?}",
                c
            );
        }
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
