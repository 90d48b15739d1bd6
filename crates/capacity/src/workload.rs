//! What the application asks of the system: users, how much they publish, to how many
//! subscribers, in which encoding, kept for how long.

use serde::{Deserialize, Serialize};

use crate::CapacityError;

/// Bounds on the inputs, so that every product the model forms stays finite and
/// meaningful (far beyond any real deployment).
const MAX_USERS: f64 = 1e12;
const MAX_RATE: f64 = 1e6;
const MAX_SIZE: f64 = 1024.0 * 1024.0 * 1024.0;

/// How pushes are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Json,
    Msgpack,
}

/// Whether pushes travel deflated (permessage-deflate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Compression {
    #[default]
    None,
    /// Deflated; `ratio` (deflated / plain size) overrides the measured one.
    Deflate { ratio: Option<f64> },
}

/// How many subscribers a channel of a class has.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Subscribers {
    /// A fixed number (capped at the number of connections).
    Count(f64),
    /// Every connection (a broadcast channel): the string `"all"`.
    All(AllTag),
}

/// The word `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllTag {
    All,
}

impl Subscribers {
    /// Subscribers per channel when there are `connections` connections.
    pub fn count(self, connections: f64) -> f64 {
        match self {
            Subscribers::Count(n) => n.min(connections).max(1.0),
            Subscribers::All(_) => connections.max(1.0),
        }
    }
}

/// A class of channels: its share of the publications and its subscribers per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelClass {
    /// A name for the report (`personal`, `group`, `broadcast`).
    pub name: String,
    /// The share of all publications that go to channels of this class (the shares
    /// add up to 1).
    pub share: f64,
    /// Subscribers per channel: a number or `"all"`.
    pub subscribers: Subscribers,
    /// How many channels of this class; by default each connection subscribes to one,
    /// so connections / subscribers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<f64>,
}

impl ChannelClass {
    /// Channels of this class when there are `connections` connections.
    pub fn channel_count(&self, connections: f64) -> f64 {
        match self.channels {
            Some(n) => n,
            None => (connections / self.subscribers.count(connections)).max(1.0),
        }
    }
}

/// The workload the plan is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Users (each with `connections_per_user` connections).
    pub users: f64,
    pub connections_per_user: f64,
    /// Publications per user per second.
    pub msg_rate: f64,
    /// Bytes of data per publication.
    pub msg_size: f64,
    /// Where the publications go.
    pub mix: Vec<ChannelClass>,
    /// History entries kept per channel (0: none).
    pub history: f64,
    /// How long a quiet channel's history is kept (s).
    pub history_ttl_s: f64,
    /// Presence on every subscription.
    pub presence: bool,
    /// Days the archive keeps (0: no archive).
    pub archive_days: f64,
    pub encoding: Encoding,
    pub compression: Compression,
}

impl Workload {
    /// `users` users publishing `msg_rate` times a second `msg_size` bytes, each
    /// publication to `fanout` subscribers; the rest at its default (one connection per
    /// user, no history, no presence, no archive, JSON, no compression).
    pub fn new(users: f64, msg_rate: f64, msg_size: f64, fanout: f64) -> Workload {
        Workload {
            users,
            connections_per_user: 1.0,
            msg_rate,
            msg_size,
            mix: vec![ChannelClass::fanout(fanout)],
            history: 0.0,
            history_ttl_s: 300.0,
            presence: false,
            archive_days: 0.0,
            encoding: Encoding::Json,
            compression: Compression::None,
        }
    }

    /// The same workload for another number of users (the growth table).
    pub fn with_users(&self, users: f64) -> Workload {
        Workload {
            users,
            ..self.clone()
        }
    }

    /// Refuses inputs the model cannot use, naming the flag.
    pub fn validate(&self) -> Result<(), CapacityError> {
        at_least("--users", self.users, 1.0, MAX_USERS)?;
        let per_user = self.connections_per_user;
        if !(per_user.is_finite() && per_user > 0.0 && per_user <= 1e6) {
            return Err(CapacityError::Invalid {
                what: "--connections-per-user".into(),
                rule: "a number above 0 (0.3: a third of the users connected at once)",
                value: per_user.to_string(),
            });
        }
        at_least("--msg-rate", self.msg_rate, 0.0, MAX_RATE)?;
        at_least("--msg-size", self.msg_size, 1.0, MAX_SIZE)?;
        at_least("--history", self.history, 0.0, 1e9)?;
        at_least("--history-ttl", self.history_ttl_s, 0.0, 1e9)?;
        at_least("--archive-days", self.archive_days, 0.0, 1e5)?;
        if let Compression::Deflate { ratio: Some(r) } = self.compression
            && !(r.is_finite() && r > 0.0 && r <= 1.0)
        {
            return Err(CapacityError::Invalid {
                what: "--compression-ratio".into(),
                rule: "a fraction above 0 and at most 1",
                value: r.to_string(),
            });
        }
        validate_mix(&self.mix)
    }
}

impl ChannelClass {
    /// One class: every publication to `fanout` subscribers.
    pub fn fanout(fanout: f64) -> ChannelClass {
        ChannelClass {
            name: "fan-out".into(),
            share: 1.0,
            subscribers: Subscribers::Count(fanout),
            channels: None,
        }
    }
}

/// Refuses `value` (of flag `what`) unless it is a number from `min` to `max`.
fn at_least(what: &str, value: f64, min: f64, max: f64) -> Result<(), CapacityError> {
    if value.is_finite() && value >= min && value <= max {
        return Ok(());
    }
    Err(CapacityError::Invalid {
        what: what.into(),
        rule: if min > 0.0 {
            "a number of 1 or more (and not absurdly large)"
        } else {
            "a number of 0 or more (and not absurdly large)"
        },
        value: value.to_string(),
    })
}

fn validate_mix(mix: &[ChannelClass]) -> Result<(), CapacityError> {
    let bad = |detail: String| CapacityError::Mix(detail);
    if mix.is_empty() {
        return Err(bad("no channel class".into()));
    }
    let mut total = 0.0;
    for class in mix {
        if !(class.share.is_finite() && class.share >= 0.0 && class.share <= 1.0) {
            return Err(bad(format!(
                "class `{}`: share must be between 0 and 1, got {}",
                class.name, class.share
            )));
        }
        total += class.share;
        if let Subscribers::Count(n) = class.subscribers {
            at_least(
                &format!("subscribers of class `{}` (--fanout)", class.name),
                n,
                1.0,
                MAX_USERS,
            )?;
        }
        if let Some(n) = class.channels {
            at_least(
                &format!("channels of class `{}`", class.name),
                n,
                1.0,
                MAX_USERS,
            )?;
        }
    }
    if (total - 1.0).abs() > 1e-3 {
        return Err(bad(format!("the shares add up to {total}, not 1")));
    }
    Ok(())
}

/// Reads a channel mix: a JSON array of classes, an object `{"classes": [...]}`, or
/// JSON lines (one class per line; blank lines and lines starting with `#` skipped).
/// A class is `{"name": "group", "share": 0.2, "subscribers": 100}`, optionally with
/// `"channels": N`; `"subscribers": "all"` is a broadcast to every connection.
pub fn parse_mix(text: &str) -> Result<Vec<ChannelClass>, CapacityError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        classes: Vec<ChannelClass>,
    }
    let trimmed = text.trim_start();
    let mix = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<ChannelClass>>(text)
            .map_err(|e| CapacityError::Mix(e.to_string()))?
    } else if let Ok(doc) = serde_json::from_str::<Doc>(text) {
        doc.classes
    } else {
        let mut classes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let class = serde_json::from_str::<ChannelClass>(line)
                .map_err(|e| CapacityError::Mix(format!("line {}: {e}", n + 1)))?;
            classes.push(class);
        }
        classes
    };
    validate_mix(&mix)?;
    Ok(mix)
}

/// Reads a channel mix file (see [`parse_mix`]).
pub fn read_mix(path: &std::path::Path) -> Result<Vec<ChannelClass>, CapacityError> {
    let text = crate::read_text(path)?;
    parse_mix(&text).map_err(|e| match e {
        CapacityError::Mix(detail) => CapacityError::Mix(format!("{}: {detail}", path.display())),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_reads_as_array_object_or_lines() {
        let lines = "# chat\n{\"name\":\"personal\",\"share\":0.7,\"subscribers\":1}\n\n\
                     {\"name\":\"group\",\"share\":0.2,\"subscribers\":100}\n\
                     {\"name\":\"news\",\"share\":0.1,\"subscribers\":\"all\",\"channels\":1}\n";
        let mix = parse_mix(lines).expect("lines");
        assert_eq!(mix.len(), 3);
        assert_eq!(mix[2].subscribers, Subscribers::All(AllTag::All));
        assert_eq!(mix[2].subscribers.count(5000.0), 5000.0);
        assert_eq!(
            mix[1].subscribers.count(10.0),
            10.0,
            "capped at the connections"
        );
        assert_eq!(mix[1].channel_count(10_000.0), 100.0);
        assert_eq!(mix[2].channel_count(10_000.0), 1.0);

        let array = r#"[{"name":"a","share":0.5,"subscribers":2},{"name":"b","share":0.5,"subscribers":3}]"#;
        assert_eq!(parse_mix(array).expect("array").len(), 2);
        let object = format!("{{\"classes\": {array}}}");
        assert_eq!(parse_mix(&object).expect("object").len(), 2);
    }

    #[test]
    fn a_bad_mix_says_why() {
        let e = parse_mix(r#"[{"name":"a","share":0.5,"subscribers":2}]"#).expect_err("sum");
        assert!(e.to_string().contains("add up to 0.5"), "{e}");
        let e = parse_mix("{\"name\":\"a\",\"share\":1,\"subscribers\":0}").expect_err("zero");
        assert!(e.to_string().contains("subscribers of class `a`"), "{e}");
        let e = parse_mix("{\"name\":\"a\",\"share\":1}\n").expect_err("missing");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e =
            parse_mix("{\"name\":\"a\",\"share\":1,\"subscribers\":\"some\"}").expect_err("word");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e =
            parse_mix(r#"[{"name":"a","share":1,"subscribers":1,"fans":3}]"#).expect_err("typo");
        assert!(e.to_string().contains("fans"), "{e}");
        assert!(parse_mix("").is_err());
    }

    #[test]
    fn inputs_are_checked() {
        let ok = Workload::new(10_000.0, 1.0, 1024.0, 1.0);
        ok.validate().expect("valid");
        let zero_rate = Workload::new(10.0, 0.0, 1024.0, 1.0);
        zero_rate.validate().expect("connections only");
        for (w, flag) in [
            (Workload::new(0.0, 1.0, 1024.0, 1.0), "--users"),
            (Workload::new(f64::NAN, 1.0, 1024.0, 1.0), "--users"),
            (Workload::new(10.0, -1.0, 1024.0, 1.0), "--msg-rate"),
            (
                Workload::new(10.0, f64::INFINITY, 1024.0, 1.0),
                "--msg-rate",
            ),
            (Workload::new(10.0, 1.0, 0.0, 1.0), "--msg-size"),
            (Workload::new(10.0, 1.0, 1024.0, 0.5), "--fanout"),
        ] {
            let e = w.validate().expect_err(flag);
            assert!(e.to_string().contains(flag), "{flag}: {e}");
        }
        let mut w = ok.clone();
        w.connections_per_user = 0.0;
        assert!(w.validate().is_err());
        w.connections_per_user = 0.3;
        w.validate().expect("a third online");
        let mut w = ok.clone();
        w.compression = Compression::Deflate { ratio: Some(1.5) };
        assert!(w.validate().is_err());
        let mut w = ok;
        w.archive_days = -1.0;
        assert!(w.validate().is_err());
    }
}
