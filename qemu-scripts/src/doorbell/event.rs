//! What the server reports to its caller instead of printing.

use std::fmt;

/// Something that happened in the server, for the host tool to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client connected and was given peer id `id`.
    PeerJoined {
        /// The new peer's id.
        id: u16,
    },
    /// Peer `id` went away; the others have been (or are being) told.
    PeerLeft {
        /// The departed peer's id.
        id: u16,
        /// `None` if the client closed its socket, else the socket error that
        /// made the server drop it.
        error: Option<String>,
    },
    /// A client was closed without an id (every id in use, or no eventfds).
    ClientRefused {
        /// Why.
        reason: String,
    },
    /// `accept` failed (e.g. out of file descriptors); the server keeps going.
    AcceptFailed {
        /// The error.
        error: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::PeerJoined { id } => write!(f, "doorbell: peer {id} joined"),
            Event::PeerLeft { id, error: None } => write!(f, "doorbell: peer {id} left"),
            Event::PeerLeft {
                id,
                error: Some(error),
            } => write!(f, "doorbell: peer {id} dropped: {error}"),
            Event::ClientRefused { reason } => write!(f, "doorbell: client refused: {reason}"),
            Event::AcceptFailed { error } => write!(f, "doorbell: accept failed: {error}"),
        }
    }
}
