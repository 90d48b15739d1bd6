//! Starling's hub: channels, subscriptions, fan-out, connection queues and limits.
//!
//! No I/O here: the server binds connections to sockets and feeds commands in; the hub
//! queues encoded frames into each connection's [`Outbox`].

pub mod hub;
pub mod metrics;
pub mod namespace;
pub mod outbox;
pub mod registry;

pub use hub::{ClientKey, FrameEncoder, FrameFormat, Hub, Published, StreamPosition, Subscriber};
pub use metrics::HubCounters;
pub use namespace::{ChannelError, ChannelRules, NamespaceOptions, Namespaces};
pub use outbox::{Outbox, PushOutcome};
pub use registry::Registry;
