//! The log's identity: a random id written once into the directory.
//!
//! Sequence numbers say where a record is in *one* log. They restart at 0 when a log
//! starts from no segments (a new or wiped directory, or one whose segments were
//! removed by hand), so a position saved by a consumer (the archive's cursor) is only
//! meaningful together with the log it came from: [`crate::Log::id`]. Within one id,
//! sequence numbers only grow and a number handed out by a tailing reader is never given
//! to another record (see `recover.rs` and the crate docs).

use std::fmt;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{self, Write};
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{LogError, io_err, sync_dir};

/// Name of the file holding the id.
pub(crate) const ID_FILE: &str = "ID";
/// First line of the id file.
const ID_HEADER: &str = "starling-log id v1";

/// Identity of one log: 128 random bits, shown as 32 lowercase hex digits.
///
/// An identity, not a secret: it tells logs apart, it protects nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId(u128);

impl LogId {
    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// An id from a number (as stored by [`as_u128`](Self::as_u128)).
    pub fn from_u128(id: u128) -> LogId {
        LogId(id)
    }

    /// A new random id. `RandomState` seeds its keys from the operating system's random
    /// source (once per thread, then varied), and time and process id go into the hash
    /// too, so two logs, even created in the same process, get different ids without a
    /// dependency on a random number crate.
    fn random() -> LogId {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut id = 0u128;
        for half in 0u8..2 {
            let mut h = RandomState::new().build_hasher();
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_u8(half);
            id = (id << 64) | u128::from(h.finish());
        }
        LogId(id)
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The text is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a log id is 32 hexadecimal digits")]
pub struct ParseLogIdError;

impl FromStr for LogId {
    type Err = ParseLogIdError;

    fn from_str(s: &str) -> Result<LogId, ParseLogIdError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseLogIdError);
        }
        u128::from_str_radix(s, 16)
            .map(LogId)
            .map_err(|_| ParseLogIdError)
    }
}

/// The directory's id. `fresh` (the log starts from no segments, so its sequence numbers
/// start at 0 again) always makes a new one; otherwise the stored one is kept, and only
/// a missing or unreadable id file is replaced (a log made before ids existed, or a
/// damaged file: positions saved against the old id then no longer match, and the
/// consumer starts over, which duplicates but never loses). Written durably (temporary
/// file, fsync, rename, directory fsync) before the first segment exists.
pub(crate) fn load_or_create(dir: &Path, fresh: bool) -> Result<LogId, LogError> {
    let path = dir.join(ID_FILE);
    if !fresh {
        match fs::read_to_string(&path) {
            Ok(text) => {
                if let Some(id) = parse(&text) {
                    return Ok(id);
                }
                tracing::warn!(path = %path.display(), "unreadable log id; giving the log a new one");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
    }
    let id = LogId::random();
    let tmp = dir.join(format!("{ID_FILE}.tmp"));
    File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{ID_HEADER}\n{id}\n").as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| io_err(&path, e))?;
    sync_dir(dir)?;
    Ok(id)
}

fn parse(text: &str) -> Option<LogId> {
    let mut lines = text.lines();
    if lines.next()? != ID_HEADER {
        return None;
    }
    lines.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_round_trip_as_text() {
        let a = LogId::random();
        let b = LogId::random();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(a.to_string().parse::<LogId>(), Ok(a));
        assert_eq!(LogId::from_u128(a.as_u128()), a);
        assert_eq!("xyz".parse::<LogId>(), Err(ParseLogIdError));
        assert_eq!(
            "0123456789abcdef0123456789abcdeg".parse::<LogId>(),
            Err(ParseLogIdError)
        );
    }

    #[test]
    fn stored_id_is_kept_unless_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), true).unwrap();
        assert_eq!(load_or_create(dir.path(), false).unwrap(), a);
        let b = load_or_create(dir.path(), true).unwrap();
        assert_ne!(a, b);
        fs::write(dir.path().join(ID_FILE), "garbage").unwrap();
        let c = load_or_create(dir.path(), false).unwrap();
        assert_ne!(c, b);
        assert_eq!(load_or_create(dir.path(), false).unwrap(), c);
    }
}
