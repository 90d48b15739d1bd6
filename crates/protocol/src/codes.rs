//! Reply error codes and disconnect (WebSocket close) codes.
//!
//! This module and the table in `docs/PROTOCOL.md` are the single source of
//! truth; a unit test checks that every code here appears in that table.

use std::borrow::Cow;

use crate::Error;

/// A reply error code with its default message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode {
    /// Numeric code sent in `error.code`.
    pub code: u32,
    /// Default message sent in `error.message`.
    pub message: &'static str,
    /// Whether the client may retry the same command later (`error.temporary`).
    pub temporary: bool,
}

impl ErrorCode {
    /// Turns the code into a reply [`Error`] with its default message.
    pub const fn error(self) -> Error {
        Error {
            code: self.code,
            message: Cow::Borrowed(self.message),
            temporary: self.temporary,
        }
    }

    /// Turns the code into a reply [`Error`] with a custom message.
    pub fn with_message(self, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            code: self.code,
            message: message.into(),
            temporary: self.temporary,
        }
    }

    /// Looks a reply error code up by number.
    pub fn from_code(code: u32) -> Option<ErrorCode> {
        ERRORS.iter().copied().find(|c| c.code == code)
    }
}

impl From<ErrorCode> for Error {
    fn from(c: ErrorCode) -> Error {
        c.error()
    }
}

const fn err(code: u32, message: &'static str, temporary: bool) -> ErrorCode {
    ErrorCode {
        code,
        message,
        temporary,
    }
}

/// 100: unexpected server-side failure.
pub const INTERNAL: ErrorCode = err(100, "internal server error", true);
/// 101: the connection or subscription token is missing or invalid.
pub const UNAUTHORIZED: ErrorCode = err(101, "unauthorized", false);
/// 102: the channel's namespace does not exist.
pub const UNKNOWN_CHANNEL: ErrorCode = err(102, "unknown channel", false);
/// 103: the client may not perform this command on this channel.
pub const PERMISSION_DENIED: ErrorCode = err(103, "permission denied", false);
/// 104: the method key is not a known method.
pub const METHOD_NOT_FOUND: ErrorCode = err(104, "method not found", false);
/// 105: the client is already subscribed to the channel.
pub const ALREADY_SUBSCRIBED: ErrorCode = err(105, "already subscribed", false);
/// 106: a limit (subscriptions per connection, rate, history size...) was hit.
pub const LIMIT_EXCEEDED: ErrorCode = err(106, "limit exceeded", false);
/// 107: the command's params are invalid (missing field, wrong type, ...).
pub const BAD_REQUEST: ErrorCode = err(107, "bad request", false);
/// 108: the feature is disabled for this namespace (presence, history, publish...).
pub const NOT_AVAILABLE: ErrorCode = err(108, "not available", false);
/// 109: the token has expired; get a new one and retry.
pub const TOKEN_EXPIRED: ErrorCode = err(109, "token expired", false);
/// 110: the publication data is larger than allowed.
pub const MESSAGE_TOO_LARGE: ErrorCode = err(110, "message too large", false);
/// 111: `unsubscribe`/`publish`/... on a channel the client is not subscribed to
/// (only where the namespace requires a subscription).
pub const NOT_SUBSCRIBED: ErrorCode = err(111, "not subscribed", false);
/// 112: recovery was requested but the position (offset, epoch) is no longer in history.
pub const UNRECOVERABLE_POSITION: ErrorCode = err(112, "unrecoverable position", false);
/// 113: `connect` sent twice on the same connection.
pub const ALREADY_CONNECTED: ErrorCode = err(113, "already connected", false);
/// 114: rate limited; retry later.
pub const TOO_MANY_REQUESTS: ErrorCode = err(114, "too many requests", true);
/// 115: the node holds as many channels as it may (`server.max_channels`); a subscribe
/// or publish that would create one more is refused. Temporary: channels come and go.
pub const CHANNEL_LIMIT: ErrorCode = err(115, "channel limit", true);
/// 116: the node cannot take the command now: its message log cannot keep up (queue
/// full) or is failed (disk full, I/O error) and durability was asked for. Nothing was
/// published (unless the message says otherwise). Temporary: retry after a pause.
pub const SERVER_BUSY: ErrorCode = err(116, "server busy", true);
/// 117: an `idempotency_key` was reused with a different request (HTTP API, 409). The
/// key stays bound to the request it was first used with for its window.
pub const IDEMPOTENCY_CONFLICT: ErrorCode = err(117, "idempotency key conflict", false);

/// Every reply error code, in numeric order.
pub const ERRORS: &[ErrorCode] = &[
    INTERNAL,
    UNAUTHORIZED,
    UNKNOWN_CHANNEL,
    PERMISSION_DENIED,
    METHOD_NOT_FOUND,
    ALREADY_SUBSCRIBED,
    LIMIT_EXCEEDED,
    BAD_REQUEST,
    NOT_AVAILABLE,
    TOKEN_EXPIRED,
    MESSAGE_TOO_LARGE,
    NOT_SUBSCRIBED,
    UNRECOVERABLE_POSITION,
    ALREADY_CONNECTED,
    TOO_MANY_REQUESTS,
    CHANNEL_LIMIT,
    SERVER_BUSY,
    IDEMPOTENCY_CONFLICT,
];

/// A disconnect code: sent as the WebSocket close code (with `reason` as the close
/// reason) and, for 4000-4999, also in a `disconnect` push just before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DisconnectCode {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason (ASCII, well under the 123-byte close-reason limit).
    pub reason: &'static str,
    /// Whether the client should reconnect (with backoff).
    pub reconnect: bool,
}

impl DisconnectCode {
    /// Looks a disconnect code up by number.
    pub fn from_code(code: u16) -> Option<DisconnectCode> {
        DISCONNECTS.iter().copied().find(|c| c.code == code)
    }

    /// The reconnect advice for any close code, known or not: 4000-4499 reconnect,
    /// 4500-4999 do not; RFC 6455 codes as in the table; anything else reconnects.
    pub fn should_reconnect(code: u16) -> bool {
        match code {
            4000..=4499 => true,
            4500..=4999 => false,
            _ => Self::from_code(code).is_none_or(|c| c.reconnect),
        }
    }
}

const fn dc(code: u16, reason: &'static str, reconnect: bool) -> DisconnectCode {
    DisconnectCode {
        code,
        reason,
        reconnect,
    }
}

/// 1000 (RFC 6455): normal closure (e.g. the client closed).
pub const NORMAL: DisconnectCode = dc(1000, "normal closure", false);
/// 1001 (RFC 6455): going away (endpoint shut down at the WebSocket layer).
pub const GOING_AWAY: DisconnectCode = dc(1001, "going away", true);
/// 1002 (RFC 6455): WebSocket protocol error.
pub const PROTOCOL_ERROR: DisconnectCode = dc(1002, "protocol error", false);
/// 1007 (RFC 6455): invalid payload data (e.g. text frame that is not UTF-8).
pub const INVALID_PAYLOAD: DisconnectCode = dc(1007, "invalid payload", false);
/// 1008 (RFC 6455): policy violation (e.g. wrong frame type for the encoding).
pub const POLICY_VIOLATION: DisconnectCode = dc(1008, "policy violation", false);
/// 1009 (RFC 6455): message too big.
pub const MESSAGE_TOO_BIG: DisconnectCode = dc(1009, "message too big", false);
/// 1011 (RFC 6455): internal error at the WebSocket layer.
pub const INTERNAL_ERROR: DisconnectCode = dc(1011, "internal error", true);

/// 4000: server shutting down / going away.
pub const SHUTDOWN: DisconnectCode = dc(4000, "shutdown", true);
/// 4001: internal server error.
pub const SERVER_ERROR: DisconnectCode = dc(4001, "internal server error", true);
/// 4002: slow consumer: the outbound queue was full.
pub const SLOW: DisconnectCode = dc(4002, "slow consumer", true);
/// 4003: no pong / no traffic within the ping interval (stale connection).
pub const NO_PONG: DisconnectCode = dc(4003, "no pong", true);
/// 4004: the connection token expired (reconnect with a fresh token).
pub const EXPIRED: DisconnectCode = dc(4004, "token expired", true);
/// 4005: connection limit reached (node, user or IP).
pub const CONNECTION_LIMIT: DisconnectCode = dc(4005, "connection limit", true);
/// 4006: the node lost the order of a subscribed channel's stream and could not repair
/// it from history (a cluster broker dropped publications, or the stream restarted with
/// a new epoch): reconnect and resubscribe with recovery, which either recovers or says
/// plainly that the position is gone.
pub const INSUFFICIENT_STATE: DisconnectCode = dc(4006, "insufficient state", true);

/// 4500: malformed frame or invalid command.
pub const BAD_REQUEST_DISCONNECT: DisconnectCode = dc(4500, "bad request", false);
/// 4501: invalid connection token.
pub const UNAUTHORIZED_DISCONNECT: DisconnectCode = dc(4501, "unauthorized", false);
/// 4502: a command other than `connect` (or a pong) arrived before `connect`.
pub const CONNECT_REQUIRED: DisconnectCode = dc(4502, "connect required", false);
/// 4503: disconnected through the server API.
pub const DISCONNECTED_BY_API: DisconnectCode = dc(4503, "disconnected", false);
/// 4504: forbidden (e.g. user banned, origin not allowed).
pub const FORBIDDEN: DisconnectCode = dc(4504, "forbidden", false);

/// Every disconnect/close code, in numeric order.
pub const DISCONNECTS: &[DisconnectCode] = &[
    NORMAL,
    GOING_AWAY,
    PROTOCOL_ERROR,
    INVALID_PAYLOAD,
    POLICY_VIOLATION,
    MESSAGE_TOO_BIG,
    INTERNAL_ERROR,
    SHUTDOWN,
    SERVER_ERROR,
    SLOW,
    NO_PONG,
    EXPIRED,
    CONNECTION_LIMIT,
    INSUFFICIENT_STATE,
    BAD_REQUEST_DISCONNECT,
    UNAUTHORIZED_DISCONNECT,
    CONNECT_REQUIRED,
    DISCONNECTED_BY_API,
    FORBIDDEN,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_sorted_and_unique() {
        assert!(ERRORS.windows(2).all(|w| w[0].code < w[1].code));
        assert!(DISCONNECTS.windows(2).all(|w| w[0].code < w[1].code));
    }

    #[test]
    fn reconnect_ranges() {
        for d in DISCONNECTS {
            assert!(d.reason.len() < 123);
            match d.code {
                4000..=4499 => assert!(d.reconnect, "{d:?}"),
                4500..=4999 => assert!(!d.reconnect, "{d:?}"),
                _ => {}
            }
            assert_eq!(DisconnectCode::should_reconnect(d.code), d.reconnect);
        }
        assert!(DisconnectCode::should_reconnect(4499));
        assert!(!DisconnectCode::should_reconnect(4999));
        assert_eq!(DisconnectCode::from_code(4002), Some(SLOW));
        assert_eq!(ErrorCode::from_code(104), Some(METHOD_NOT_FOUND));
    }

    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        for e in ERRORS {
            let row = format!("| {} | error |", e.code);
            assert!(doc.contains(&row), "docs/PROTOCOL.md lacks a row `{row}`");
        }
        for d in DISCONNECTS {
            let row = format!("| {} | close |", d.code);
            assert!(doc.contains(&row), "docs/PROTOCOL.md lacks a row `{row}`");
        }
    }
}
