//! The emulator's state as every handler sees it: one generation of the scenario and what it
//! built (identities, vaults, keys), fault counters, and what survives a reload (the request
//! log, the limits, the key memo). The server owns the listeners and routes requests here.

use crate::exchange::Req;
use crate::limits::Limits;
use crate::material::{KeyMemo, Store};
use crate::scenario::{Endpoint, Scenario};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One generation of the scenario and what it built, plus the state shared by all generations.
pub struct State {
    pub scenario: Scenario,
    pub store: Store,
    pub started: Instant,
    pub lifetime: u64,
    /// 0 at start, +1 per successful reload.
    pub generation: u64,
    pub(crate) fault_counts: Mutex<Vec<u64>>,
    pub nmi_calls: Arc<Mutex<HashMap<(String, String), u64>>>,
    pub(crate) shared: Shared,
}

/// What survives a reload.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) started: Instant,
    pub(crate) nmi_calls: Arc<Mutex<HashMap<(String, String), u64>>>,
    pub(crate) log: Arc<Option<Mutex<std::fs::File>>>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) memo: KeyMemo,
}

impl State {
    pub(crate) fn new(scenario: Scenario, store: Store, shared: Shared, generation: u64) -> State {
        State {
            lifetime: scenario.token_lifetime_secs.unwrap_or(86399),
            fault_counts: Mutex::new(vec![0; scenario.faults.len()]),
            scenario,
            store,
            started: shared.started,
            generation,
            nmi_calls: shared.nmi_calls.clone(),
            shared,
        }
    }
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn log(
        &self,
        r: &Req,
        endpoint: Endpoint,
        status: u16,
        t0: Instant,
        identity: Option<String>,
        request_id: Option<String>,
        fault: Option<&str>,
        throttled: Option<&str>,
    ) {
        let Some(log) = self.shared.log.as_ref() else {
            return;
        };
        let mut line = json!({
            "ts": crate::util::rfc3339_now(),
            "endpoint": endpoint.as_str(),
            "method": r.method,
            "host": r.host,
            "path": r.path,
            "status": status,
            "latency_ms": t0.elapsed().as_millis() as u64,
            "client_id": identity,
            "request_id": request_id,
        });
        if let Some(f) = fault {
            line["fault"] = json!(f);
        }
        if let Some(t) = throttled {
            // "concurrency" / "rate" (IMDS limits) or "vault" (vault throttle): 429s by cause.
            line["throttled"] = json!(t);
        }
        if endpoint == Endpoint::Nmi {
            line["podns"] = json!(r.header("podns"));
            line["podname"] = json!(r.header("podname"));
            line["peer"] = json!(r.peer.ip().to_string());
        }
        let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "{line}");
        let _ = f.flush();
    }

    pub fn identity_by_client_id(&self, cid: &str) -> Option<&crate::material::IdentityState> {
        self.store
            .identities
            .iter()
            .find(|i| i.spec.client_id.eq_ignore_ascii_case(cid))
    }
}
