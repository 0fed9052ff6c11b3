//! Logging: the Logger actor and its drains, the log formats, the progress
//! bar.

pub mod log_format;
pub mod logger;
pub mod progress;
