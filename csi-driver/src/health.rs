//! Readiness of the driver, as one answer for the CSI `Probe` call and the
//! HTTP `/healthz` endpoint. Each part of the driver that can be unready (the
//! infra caches of the controller) registers a [`ReadinessCheck`].

use std::sync::Arc;

/// What a part of the driver says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Serving.
    Ready,
    /// Still starting (e.g. caches not yet synced); not an error.
    Starting(String),
    /// Was working and is not now (e.g. the infra API stopped answering).
    Failing(String),
}

/// Something that knows whether it can serve.
pub trait ReadinessCheck: Send + Sync {
    fn readiness(&self) -> Readiness;
}

/// All registered checks; ready when every one is.
#[derive(Clone, Default)]
pub struct Health {
    checks: Vec<Arc<dyn ReadinessCheck>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, check: Arc<dyn ReadinessCheck>) {
        self.checks.push(check);
    }

    /// The first failing check wins over the first starting one.
    pub fn readiness(&self) -> Readiness {
        let mut starting = None;
        for check in &self.checks {
            match check.readiness() {
                Readiness::Ready => {}
                f @ Readiness::Failing(_) => return f,
                s @ Readiness::Starting(_) => {
                    starting.get_or_insert(s);
                }
            }
        }
        starting.unwrap_or(Readiness::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Readiness);
    impl ReadinessCheck for Fixed {
        fn readiness(&self) -> Readiness {
            self.0.clone()
        }
    }

    #[test]
    fn failing_beats_starting_beats_ready() {
        let mut h = Health::new();
        assert_eq!(h.readiness(), Readiness::Ready);
        h.register(Arc::new(Fixed(Readiness::Starting("sync".into()))));
        assert_eq!(h.readiness(), Readiness::Starting("sync".into()));
        h.register(Arc::new(Fixed(Readiness::Failing("down".into()))));
        assert_eq!(h.readiness(), Readiness::Failing("down".into()));
    }
}
