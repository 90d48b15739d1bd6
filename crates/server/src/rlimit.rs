//! The open-files limit. Every connection is a file descriptor, and most systems start
//! processes with a soft limit of 1,024 (container runtimes too) while the hard limit is
//! far higher: a node left at the soft limit refuses its 1,025th client. The node raises
//! its soft limit to the hard one at start, as a process may without privileges.

/// The soft and hard `RLIMIT_NOFILE` after raising the soft limit to the hard one, and
/// the soft limit before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the ceiling; raising it takes privileges, e.g. systemd's
    /// `LimitNOFILE`).
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit.
pub fn raise_open_files() -> std::io::Result<Raised> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; the call only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(Raised {
        before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let r = raise_open_files().expect("getrlimit");
        assert_eq!(r.soft, r.hard);
        assert!(r.before <= r.soft);
        // A second call finds nothing left to raise.
        let again = raise_open_files().expect("getrlimit");
        assert_eq!(again.before, again.soft);
    }
}
