//! Starling protocol.
