//! Calls through the C ABI.
