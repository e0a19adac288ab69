//! Fault injection: added latency, per-resource error rates with a chosen HTTP code,
//! dropping every open watch, and full outages (503 for everything but `/lab`).
//! [`Faults`] is the in-process handle; [`FaultSpec`] is the JSON body of
//! `POST /lab/faults`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Current faults, shared by the request path and the handles.
pub struct FaultState {
    latency: Mutex<Duration>,
    error_rates: Mutex<HashMap<String, (f64, u16)>>,
    outage_until: Mutex<Option<Instant>>,
    drops: watch::Sender<u64>,
}

impl Default for FaultState {
    fn default() -> Self {
        Self {
            latency: Mutex::new(Duration::ZERO),
            error_rates: Mutex::new(HashMap::new()),
            outage_until: Mutex::new(None),
            drops: watch::channel(0).0,
        }
    }
}

impl FaultState {
    pub fn latency(&self) -> Duration {
        self.latency.lock().map(|l| *l).unwrap_or_default()
    }

    /// The code to fail a request on `resource` (`pods` or `pods/status`) with, drawn
    /// from the configured rate; a rate set on `pods` also covers its subresources,
    /// and `*` covers everything.
    pub fn injected_error(&self, resource: &str) -> Option<u16> {
        let rates = self.error_rates.lock().ok()?;
        let base = resource.split('/').next().unwrap_or(resource);
        let (rate, code) = rates
            .get(resource)
            .or_else(|| rates.get(base))
            .or_else(|| rates.get("*"))?;
        (rand::rng().random::<f64>() < *rate).then_some(*code)
    }

    pub fn in_outage(&self) -> bool {
        self.outage_until
            .lock()
            .ok()
            .and_then(|u| *u)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Changes whenever open watches must be dropped.
    pub fn drops(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }

    fn drop_watches(&self) {
        self.drops.send_modify(|g| *g += 1);
    }

    fn spec(&self) -> FaultSpec {
        let until = self.outage_until.lock().ok().and_then(|u| *u);
        FaultSpec {
            latency_ms: Some(self.latency().as_millis() as u64),
            error_rates: self
                .error_rates
                .lock()
                .map(|r| {
                    r.iter()
                        .map(|(resource, (rate, code))| ErrorRate {
                            resource: resource.clone(),
                            rate: *rate,
                            code: *code,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            drop_watches: false,
            outage_ms: until
                .map(|u| u.saturating_duration_since(Instant::now()).as_millis() as u64),
            clear: false,
        }
    }
}

/// Handle for injecting faults into a running server.
#[derive(Clone)]
pub struct Faults {
    pub(crate) state: Arc<FaultState>,
}

impl Faults {
    /// Delays every API request by `d`.
    pub fn set_latency(&self, d: Duration) {
        if let Ok(mut l) = self.state.latency.lock() {
            *l = d;
        }
    }

    /// Fails this fraction (0..=1) of requests on `resource` (plural, optionally with
    /// `/subresource`; `*` for all) with `code`. A rate of 0 removes the fault.
    pub fn set_error_rate(&self, resource: &str, rate: f64, code: u16) {
        if let Ok(mut r) = self.state.error_rates.lock() {
            if rate <= 0.0 {
                r.remove(resource);
            } else {
                r.insert(resource.to_string(), (rate.min(1.0), code));
            }
        }
    }

    /// Ends every open watch stream now.
    pub fn drop_watches(&self) {
        self.state.drop_watches();
    }

    /// Answers 503 to everything (and drops watches) for `d`.
    pub fn outage(&self, d: Duration) {
        if let Ok(mut u) = self.state.outage_until.lock() {
            *u = Some(Instant::now() + d);
        }
        self.state.drop_watches();
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        if let Ok(mut r) = self.state.error_rates.lock() {
            r.clear();
        }
        if let Ok(mut u) = self.state.outage_until.lock() {
            *u = None;
        }
    }

    /// Applies a [`FaultSpec`]: `clear` first, then each field that is set.
    pub fn apply(&self, spec: &FaultSpec) {
        if spec.clear {
            self.clear();
        }
        if let Some(ms) = spec.latency_ms {
            self.set_latency(Duration::from_millis(ms));
        }
        for e in &spec.error_rates {
            self.set_error_rate(&e.resource, e.rate, e.code);
        }
        if spec.drop_watches {
            self.drop_watches();
        }
        if let Some(ms) = spec.outage_ms {
            self.outage(Duration::from_millis(ms));
        }
    }

    /// The faults in force.
    pub fn current(&self) -> FaultSpec {
        self.state.spec()
    }
}

/// One per-resource error rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorRate {
    pub resource: String,
    pub rate: f64,
    pub code: u16,
}

/// Body of `POST /lab/faults` (and answer of `GET /lab/faults`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultSpec {
    pub latency_ms: Option<u64>,
    pub error_rates: Vec<ErrorRate>,
    pub drop_watches: bool,
    pub outage_ms: Option<u64>,
    pub clear: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rates_cover_subresources_and_clear() {
        let f = Faults {
            state: Arc::new(FaultState::default()),
        };
        f.set_error_rate("pods", 1.0, 500);
        assert_eq!(f.state.injected_error("pods/status"), Some(500));
        assert_eq!(f.state.injected_error("services"), None);
        f.clear();
        assert_eq!(f.state.injected_error("pods"), None);
    }

    #[test]
    fn outage_is_timed_and_drops_watches() {
        let f = Faults {
            state: Arc::new(FaultState::default()),
        };
        let drops = f.state.drops();
        f.outage(Duration::from_secs(60));
        assert!(f.state.in_outage());
        assert!(drops.has_changed().unwrap_or(false));
        f.clear();
        assert!(!f.state.in_outage());
    }
}
