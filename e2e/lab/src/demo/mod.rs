//! `lab demo`: a narrated run through what the infra side of the lab does,
//! as a list of [`Step`]s over a running [`Lab`], each printing a timeline of
//! what it observes through watches. Later steps (the CSI driver, the cloud
//! provider) are added by appending to [`steps`].

pub mod steps;
pub mod timeline;

use std::future::Future;
use std::pin::Pin;

pub use timeline::Timeline;

use crate::{Lab, LabError};

/// What a step returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), LabError>> + Send + 'a>>;

/// One titled part of the demo.
pub struct Step {
    pub title: &'static str,
    pub run: for<'a> fn(&'a Lab, &'a Timeline) -> StepFuture<'a>,
}

/// The demo's steps, in order.
pub fn steps() -> Vec<Step> {
    vec![
        Step {
            title: "an infra DataVolume, hotplugged into a worker VM and unplugged again",
            run: |lab, t| Box::pin(steps::hotplug(lab, t)),
        },
        Step {
            title: "an infra LoadBalancer Service getting its addresses and endpoints",
            run: |lab, t| Box::pin(steps::load_balancer(lab, t)),
        },
    ]
}

/// Runs `steps` in order, stopping at the first failure.
pub async fn run(lab: &Lab, timeline: &Timeline, steps: &[Step]) -> Result<(), LabError> {
    for (i, step) in steps.iter().enumerate() {
        timeline.section(&format!("step {}: {}", i + 1, step.title));
        (step.run)(lab, timeline).await?;
    }
    timeline.section("done");
    Ok(())
}
