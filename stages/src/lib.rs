//! The stages of treesync's pipeline, the messages between them and the
//! model they share. The binary (`src/`) assembles them; nothing here knows
//! about the command line.

pub mod applier;
pub mod backup;
pub mod differ;
pub mod fold;
pub mod hash_cache;
pub mod hasher;
pub mod hooks;
pub mod identity;
pub mod log_format;
pub mod logger;
pub mod messages;
pub mod model;
pub mod on_tick;
pub mod options;
pub mod plan;
pub mod progress;
pub mod racy;
pub mod relpath;
pub mod replica_fs;
pub mod replica_ops;
pub mod root;
pub mod rules;
pub mod scanner;
pub mod scheduler;
pub mod stage;
pub mod state;
pub mod stop;
#[cfg(test)]
pub mod testing;
pub mod walk;
pub mod watcher;
