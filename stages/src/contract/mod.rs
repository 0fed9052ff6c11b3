//! The contract between stages: messages, the tick context, the model, the
//! plan, paths relative to the roots, options, and the traits a stage or a
//! per-operation hook implements.

pub mod hard_links;
pub mod hooks;
pub mod messages;
pub mod model;
pub mod moves;
pub mod options;
pub mod plan;
pub mod relpath;
pub mod replica;
pub mod stage;
pub mod stop;
