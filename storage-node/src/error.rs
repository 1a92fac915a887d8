use lauscha_core::ShardId;

/// Errors of the storage node.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// No shard with this id.
    #[error("shard {0} not found")]
    NotFound(ShardId),
    /// Shards are immutable; this id is taken.
    #[error("shard {0} already exists")]
    AlreadyExists(ShardId),
    /// Stored bytes no longer match their hashes (bit rot, a torn sector, tampering).
    #[error("shard {id} failed its checksum: {what}")]
    Corrupt {
        /// The shard.
        id: ShardId,
        /// Which part failed.
        what: String,
    },
    /// The bytes a writer sent do not match the length or digest it declared.
    #[error("shard {id} rejected: {reason}")]
    Rejected {
        /// The shard.
        id: ShardId,
        /// What did not match.
        reason: String,
    },
    /// A request outside what the node accepts (bad range, oversized shard, bad header).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The disk is full.
    #[error("no space left on the shard disk")]
    DiskFull,
    /// The data directory belongs to another node id.
    #[error("data directory {dir} belongs to node {found}, not {expected}")]
    WrongNode {
        /// The directory.
        dir: String,
        /// The id recorded in it.
        found: u32,
        /// The id configured.
        expected: u32,
    },
    /// Any other I/O failure.
    #[error("shard disk I/O")]
    Io(#[source] std::io::Error),
}

impl ShardError {
    /// Whether this is the disk failing to give a shard's bytes back: a media error (EIO),
    /// damage the file system found (EUCLEAN, EBADMSG), or a directory where a shard file
    /// belongs (EISDIR). Such a shard cannot be served; the scrubber moves it out of
    /// service under its rules (`scrub.rs`). Other I/O errors (out of file descriptors or
    /// memory, say) say nothing about the shard, which stays.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, ShardError::Io(e) if io_is_unreadable(e))
    }
}

/// [`ShardError::is_unreadable`] of an I/O error.
pub(crate) fn io_is_unreadable(e: &std::io::Error) -> bool {
    use nix::libc::{EBADMSG, EIO, EISDIR, EUCLEAN};
    matches!(e.raw_os_error(), Some(EIO | EUCLEAN | EBADMSG | EISDIR))
}

impl From<std::io::Error> for ShardError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            ShardError::DiskFull
        } else {
            ShardError::Io(e)
        }
    }
}

impl From<ShardError> for tonic::Status {
    fn from(e: ShardError) -> tonic::Status {
        use tonic::Status;
        match &e {
            ShardError::NotFound(_) => Status::not_found(e.to_string()),
            ShardError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            ShardError::Corrupt { .. } => Status::data_loss(e.to_string()),
            ShardError::Rejected { .. } => Status::invalid_argument(e.to_string()),
            ShardError::InvalidRequest(_) => Status::invalid_argument(e.to_string()),
            ShardError::DiskFull => Status::resource_exhausted(e.to_string()),
            ShardError::WrongNode { .. } => Status::failed_precondition(e.to_string()),
            ShardError::Io(io) => Status::internal(format!("{e}: {io}")),
        }
    }
}
