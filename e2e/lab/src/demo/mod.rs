//! `lab demo`: a narrated run of the suite in a throw-away lab. First a
//! hosted cluster: `examples/hostedcluster.yaml` applied to the management
//! cluster, its control plane coming up and answering through its
//! published endpoint, `examples/nodepool.yaml`'s VMs joining it as
//! nodes, and traffic through the infra load balancer reaching pods on
//! them. Then, in the lab's guest cluster, a guest
//! PersistentVolumeClaim becomes an infra DataVolume, is hotplugged into the
//! worker VM its pod runs on, formatted, mounted and written, then read back
//! from a pod on the other worker; a guest LoadBalancer Service becomes an
//! infra Service and gets its address, and an HTTP request from outside
//! both clusters reaches a guest pod through it, before and after the pod
//! moves to the other worker (the lab network, `lab_net`). Every [`Step`] follows the objects
//! through watches and prints what it sees on the [`Timeline`].

pub mod hosted;
pub mod steps;
pub mod timeline;

use std::future::Future;
use std::pin::Pin;

pub use timeline::Timeline;

use crate::suite::Suite;
use crate::{Lab, LabError};

/// What a step returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), LabError>> + Send + 'a>>;

/// A lab with the suite running on it: what the steps act on.
pub struct Demo {
    pub lab: Lab,
    pub suite: Suite,
}

/// One titled part of the demo.
pub struct Step {
    pub title: &'static str,
    pub run: for<'a> fn(&'a Demo, &'a Timeline) -> StepFuture<'a>,
}

/// The demo's steps, in order.
pub fn steps() -> Vec<Step> {
    vec![
        Step {
            title: "a hosted cluster from examples/hostedcluster.yaml: its control plane comes up and serves through its endpoint, and its NodePool's VMs join it",
            run: |demo, t| Box::pin(hosted::hosted_cluster(demo, t)),
        },
        Step {
            title: "a guest PersistentVolumeClaim: provisioned, attached, mounted, written, read back",
            run: |demo, t| Box::pin(steps::volume(demo, t)),
        },
        Step {
            title: "a guest LoadBalancer Service: mirrored into the infra cluster, given an address, answering through it",
            run: |demo, t| Box::pin(steps::load_balancer(demo, t)),
        },
    ]
}

/// Runs `steps` in order, stopping at the first failure.
pub async fn run(demo: &Demo, timeline: &Timeline, steps: &[Step]) -> Result<(), LabError> {
    for (i, step) in steps.iter().enumerate() {
        timeline.section(&format!("step {}: {}", i + 1, step.title));
        (step.run)(demo, timeline).await?;
    }
    timeline.section("done");
    Ok(())
}
