//! Node-wide admission of requests to a service, one piece for IMDS, AAD and Key Vault: wait
//! out the throttle window recorded for whom the request would be throttled with, take a slot
//! of the service's slot set (a fair share per namespace, see [`super::slots`]), look at the
//! window again (a 429 may have come while the request queued); then record the service's 429s
//! for the other kv processes of the node.
//!
//! Slots are taken by the transport, for the time a request is on the wire: never while a
//! request waits for its token or backs off between tries. A token request takes a slot of its
//! own (IMDS allows a VM 5 at once). A Key Vault request shares its process's slot for the
//! vault's set: the first request in flight takes it, the others ride along, the last answer
//! read releases it ([`Admission::shared`]), so a mount of 200 objects costs one slot and one
//! look at the slot files, not 200.

use super::slots::{self, SlotGuard};
use super::throttle::Throttle;
use super::NodeState;
use crate::error::{Code, Error, Result};
use crate::retry::Deadline;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How long a process sharing a slot trusts its last look at the throttle window: one read of
/// the record per 100 ms of requests rather than one per request. A 429 this process receives
/// makes the next request look at once.
const RECHECK: Duration = Duration::from_millis(100);

/// What requests to one service are admitted against.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Whose 429 window requests honour and record (see [`super::throttle`]): the host for
    /// IMDS and a vault, `<authority host>/<tenant>/<client id>` for AAD.
    pub throttle: String,
    /// How messages name it, e.g. `IMDS (169.254.169.254)`.
    pub service: String,
    /// The node's slot set for the service and its size, when its concurrency is bounded.
    pub slots: Option<(String, usize)>,
    /// The namespace requests are made for: its fair share of the slots (`None` counts as one
    /// namespace of its own).
    pub owner: Option<String>,
}

/// Admission of one caller's requests through a [`Gate`].
#[derive(Debug)]
pub struct Admission {
    node: NodeState,
    gate: Gate,
    shared: bool,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// The open throttle records, once opened (`None` while the node state is unusable).
    throttle: Option<Arc<Throttle>>,
    /// When the window was last seen closed.
    checked: Option<Instant>,
}

/// A request's admission: holds its slot (its own, or its part of the process's shared one)
/// until dropped, which the caller does when the answer is read.
#[derive(Debug)]
pub struct Ticket {
    _own: Option<SlotGuard>,
    _shared: Option<Arc<Turn>>,
}

/// The slot a process shares among its requests in flight to one slot set.
#[derive(Debug)]
pub struct Turn {
    _slot: Option<SlotGuard>,
}

/// (state root, slot set, owner) → the process's current turn, if any request holds it.
type Turns = Mutex<HashMap<(PathBuf, String, Option<String>), Arc<tokio::sync::Mutex<Weak<Turn>>>>>;

fn turns() -> &'static Turns {
    static TURNS: OnceLock<Turns> = OnceLock::new();
    TURNS.get_or_init(Default::default)
}

impl Admission {
    /// Each request takes a slot of its own (token requests).
    pub fn new(node: NodeState, gate: Gate) -> Admission {
        Admission {
            node,
            gate,
            shared: false,
            window: Mutex::default(),
        }
    }

    /// Concurrent requests of this process share one slot (Key Vault).
    pub fn shared(node: NodeState, gate: Gate) -> Admission {
        Admission {
            shared: true,
            ..Admission::new(node, gate)
        }
    }

    /// Admits one request (one try) within the deadline: `KV429_THROTTLED` when a window
    /// outlasts it, `KV_TIMEOUT` when no slot came free in time.
    pub async fn enter(&self, deadline: &Deadline) -> Result<Ticket> {
        self.wait_window(deadline, false).await?;
        let (ticket, fresh) = match &self.gate.slots {
            None => (
                Ticket {
                    _own: None,
                    _shared: None,
                },
                false,
            ),
            Some((name, n)) if self.shared => {
                let (turn, fresh) = self.shared_turn(name, *n, deadline).await?;
                (
                    Ticket {
                        _own: None,
                        _shared: Some(turn),
                    },
                    fresh,
                )
            }
            Some((name, n)) => {
                let slot = self.take(name, *n, deadline).await?;
                let fresh = slot.is_some();
                (
                    Ticket {
                        _own: slot,
                        _shared: None,
                    },
                    fresh,
                )
            }
        };
        if fresh {
            // A 429 may have opened a window while this request queued for its slot.
            self.wait_window(deadline, true).await?;
        }
        Ok(ticket)
    }

    /// Records the answer's throttle window for the node (only a 429 that says how long:
    /// without one each process's own backoff applies).
    pub fn note(&self, status: u16, after: Option<Duration>) {
        let (429, Some(after)) = (status, after) else {
            return;
        };
        let key = &self.gate.throttle;
        let recorded = self
            .throttle()
            .ok_or_else(|| Error::new(Code::Internal, "node state unusable"))
            .and_then(|t| t.record(key, after));
        match recorded {
            Ok(()) => crate::log::info(
                "throttled",
                serde_json::json!({"key": key, "retry_after_ms": after.as_millis() as u64}),
            ),
            Err(e) => crate::log::warn(
                "throttle_record",
                serde_json::json!({"key": key, "error": e.to_string()}),
            ),
        }
        self.lock_window().checked = None;
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's throttle records, opened once (`None`: without usable node state every
    /// process is on its own, as before the node state existed).
    fn throttle(&self) -> Option<Arc<Throttle>> {
        let mut window = self.lock_window();
        if window.throttle.is_none() {
            window.throttle = self.node.throttle().ok().map(Arc::new);
        }
        window.throttle.clone()
    }

    /// Waits while the gate's key is in a throttle window another request recorded. A window
    /// that outlasts the deadline is the call's answer at once: `KV429_THROTTLED`, naming the
    /// service. `fresh`: look even if a look just found none.
    async fn wait_window(&self, deadline: &Deadline, fresh: bool) -> Result<()> {
        let mut look = fresh || !self.shared;
        loop {
            if !look {
                let recent = self.lock_window().checked;
                if recent.is_some_and(|t| t.elapsed() < RECHECK) {
                    return Ok(());
                }
            }
            let Some(throttle) = self.throttle() else {
                return Ok(());
            };
            // Another process may extend the window while this one waits: look after each wait.
            let Some(wait) = throttle.wait_time(&self.gate.throttle) else {
                self.lock_window().checked = Some(Instant::now());
                return Ok(());
            };
            if wait >= deadline.remaining() {
                return Err(Error::new(
                    Code::Throttled,
                    format!(
                        "{} asked this node to wait {}ms (HTTP 429 Retry-After), past this call's deadline; spread pod starts or raise the service's limits",
                        self.gate.service,
                        wait.as_millis()
                    ),
                ));
            }
            crate::log::info(
                "throttle_wait",
                serde_json::json!({"key": self.gate.throttle, "ms": wait.as_millis() as u64}),
            );
            tokio::time::sleep(wait).await;
            look = true;
        }
    }

    /// The process's turn at the slot set: the one its requests in flight hold, or a slot
    /// taken for it now (`true`).
    async fn shared_turn(
        &self,
        name: &str,
        n: usize,
        deadline: &Deadline,
    ) -> Result<(Arc<Turn>, bool)> {
        let key = (
            self.node.root().to_path_buf(),
            name.to_string(),
            self.gate.owner.clone(),
        );
        let current = {
            let mut turns = turns().lock().unwrap_or_else(|p| p.into_inner());
            turns.entry(key).or_default().clone()
        };
        // One request of the process takes the slot; the others wait for it here.
        let mut current = current.lock().await;
        if let Some(turn) = current.upgrade() {
            return Ok((turn, false));
        }
        let turn = Arc::new(Turn {
            _slot: self.take(name, n, deadline).await?,
        });
        *current = Arc::downgrade(&turn);
        Ok((turn, true))
    }

    /// Takes one of the set's slots for the gate's owner. A node state that cannot be used (not
    /// a 0700 directory kv owns) is logged and skipped: the slots protect the service, and a
    /// mount must not fail because /run is odd.
    async fn take(&self, name: &str, n: usize, deadline: &Deadline) -> Result<Option<SlotGuard>> {
        let owner = self.gate.owner.as_deref();
        match self
            .node
            .acquire_fair(name, n, owner, deadline.instant())
            .await
        {
            Ok(slot) => Ok(Some(slot)),
            Err(e) if e.code() == Code::Timeout => Err(Error::new(
                Code::Timeout,
                format!(
                    "timed out after {}s waiting for one of the node's {n} request slots for {}: other kv processes of the node kept them busy (each namespace may hold {} while others wait)",
                    deadline.total().as_secs_f64(),
                    self.gate.service,
                    slots::fair_share(n)
                ),
            )),
            Err(e) => {
                crate::log::warn(
                    "node_slot",
                    serde_json::json!({"slot": name, "error": e.to_string()}),
                );
                Ok(None)
            }
        }
    }
}
