//! The memory engine: channel streams kept in this process (the single-node default).
