//! One tenant cannot slow, stop or mislead kv for another (issue: tenant isolation).
//!
//! Every case drives the shipped binary kubelet-style in a network namespace against the
//! emulator, with a hostile namespace and a victim namespace on one node. Each module pins one
//! group of the numbered items; each case names its item and failed on the tree before the fix.

mod common;

#[path = "tenants/agent.rs"]
mod agent;
#[path = "tenants/wire.rs"]
mod wire;
