//! The proxy's labels that metrics count by: which listener, and what an
//! accept failed with. A leaf, so that metrics need not import the proxy
//! (modules depend one way: config, labels → metrics → routes → tls →
//! proxy → control, admin).

use std::io;

use rustix::io::Errno;

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Outgoing,
    Incoming,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outgoing => "outgoing",
            Self::Incoming => "incoming",
        }
    }
}

/// What went wrong in `accept`, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptErrorKind {
    /// The process is out of file descriptors.
    Emfile,
    /// The system is.
    Enfile,
    Enobufs,
    Enomem,
    /// One connection failed before it was accepted (aborted, reset):
    /// nothing to wait for.
    Connection,
    Other,
}

impl AcceptErrorKind {
    pub const ALL: [Self; 6] = [
        Self::Emfile,
        Self::Enfile,
        Self::Enobufs,
        Self::Enomem,
        Self::Connection,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Emfile => "emfile",
            Self::Enfile => "enfile",
            Self::Enobufs => "enobufs",
            Self::Enomem => "enomem",
            Self::Connection => "connection",
            Self::Other => "other",
        }
    }

    pub(crate) fn of(e: &io::Error) -> Self {
        match Errno::from_io_error(e) {
            Some(Errno::MFILE) => Self::Emfile,
            Some(Errno::NFILE) => Self::Enfile,
            Some(Errno::NOBUFS) => Self::Enobufs,
            Some(Errno::NOMEM) => Self::Enomem,
            Some(Errno::CONNABORTED | Errno::CONNRESET | Errno::PROTO | Errno::PERM) => {
                Self::Connection
            }
            _ => match e.kind() {
                io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock => Self::Connection,
                _ => Self::Other,
            },
        }
    }
}
