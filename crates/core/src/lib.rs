//! Starling's hub: channels, subscriptions, fan-out, connection queues and limits.
//!
//! No I/O here: the server binds connections to sockets and feeds commands in; the hub
//! queues encoded frames into each connection's [`Outbox`].

pub mod engine;
pub mod history;
pub mod hub;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod outbox;
mod presence;
pub mod registry;

pub use history::{HistoryPolicy, HistoryQuery};
pub use hub::{
    ChannelOptions, ClientKey, Delivery, FrameEncoder, FrameFormat, HistoryReadError, Hub,
    JoinOutcome, JoinTicket, Joined, PublishError, Published, RecoverFrom, StreamPosition,
    SubscribeError, Subscriber, now_ms,
};
pub use journal::{DurableAck, Journal, JournalError};
pub use limits::{ConnectionBucket, TokenBucket};
pub use metrics::{Histogram, HubCounters};
pub use namespace::{
    CHANNEL_NAME_PATTERN, ChannelError, ChannelRules, MAX_CHANNEL_LEN, NamespaceOptions,
    Namespaces, OTHER_NAMESPACE_LABEL, validate_channel_name,
};
pub use node::{Cluster, ControlSink, FirstFrame, Node, NodeHandler, Publish};
pub use outbox::{DirectWrite, Outbox, PushOutcome};
pub use registry::Registry;
