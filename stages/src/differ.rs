//! Differ (stub)
