//! Starling core.
