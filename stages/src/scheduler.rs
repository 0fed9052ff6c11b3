//! Scheduler (stub)
