//! The stages of treesync's pipeline, the messages between them and the
//! model they share. The binary (`src/`) assembles them; nothing here knows
//! about the command line.
//!
//! - `contract`: what crosses stages (messages, the tick context, the
//!   model, the plan, relative paths, options, the `Stage` trait, the hook
//!   trait). Everything else depends on it; it depends on nothing else but
//!   the filesystem layer's capability types.
//! - `stages`: one file per stage (and the Scheduler and Watcher actors
//!   that start ticks); no stage imports another.
//! - `fs`: the confined filesystem layer: root handles, the walk, replica
//!   operations, rules, state files, the digest cache, root identity, the
//!   replica's probed capabilities, hooks that act on the replica.
//! - `log`: the Logger, the log formats and the progress bar.

pub mod contract;
pub mod fs;
pub mod log;
pub mod remote;
pub mod stages;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
