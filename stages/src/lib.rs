//! The stages of treesync's pipeline, the messages between them and the
//! model they share. The binary (`src/`) assembles them; nothing here knows
//! about the command line.

pub mod messages;
pub mod model;
pub mod options;
pub mod plan;
pub mod relpath;
pub mod root;
pub mod stop;
