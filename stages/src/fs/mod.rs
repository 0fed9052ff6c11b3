//! The confined filesystem layer: every path below a root is reached from
//! the root's handle, never through a link; the replica's state folder;
//! what the replica's filesystem keeps; hooks that act on the replica;
//! replica folders of ours unlocked for as long as an operation needs.

pub mod backup;
pub mod fold;
pub mod fs_kind;
pub mod hash_cache;
pub mod identity;
pub mod racy;
pub mod replica_fs;
pub mod replica_ops;
pub mod root;
pub mod rules;
pub mod state;
pub mod unlock;
pub mod walk;
pub mod xattrs;
