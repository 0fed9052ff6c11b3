//! The pipeline's stages, one file each, and the actors that start ticks
//! (Scheduler) and report changed folders (Watcher). A stage knows the
//! contract and the filesystem layer, never another stage.

pub mod applier;
pub mod differ;
pub mod hasher;
pub mod on_tick;
pub mod scanner;
pub mod scheduler;
pub mod watcher;
