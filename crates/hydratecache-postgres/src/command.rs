//! What the transport and its subscriptions ask of the listener task.

use hydratecache_core::Result;
use tokio::sync::oneshot;

/// What the listener connection is doing, from the server's point of view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerInfo {
    /// Process id of the listener's server backend (`pg_backend_pid()`), or
    /// `None` when no listener connection is open.
    pub backend_pid: Option<i32>,
    /// The channels that connection listens on, sorted
    /// (`pg_listening_channels()`, asked on that connection).
    pub channels: Vec<String>,
}

/// Requests to the listener task.
#[derive(Debug)]
pub(crate) enum Command {
    /// A subscription of `topic` was registered: answer once the listener
    /// connection listens on it (`LISTEN` for the first one).
    Subscribe {
        topic: String,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The last subscription of `topic` was dropped: `UNLISTEN` it unless
    /// another one was registered meanwhile.
    Unsubscribe {
        topic: String,
    },
    Info {
        reply: oneshot::Sender<Result<ListenerInfo>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}
