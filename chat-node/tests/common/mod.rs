//! The chat-node tests' harness lives in the shared test kit (`e2e/testkit`).

#![allow(unused_imports)]

pub use parley_testkit::node::*;
