//! Hasher (stub)
