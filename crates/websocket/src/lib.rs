//! Starling websocket.
