//! Typed infra-cluster resources shared by the CSI driver, the cloud provider,
//! the manager and the lab simulators, and the tenant scoping rules that keep
//! one guest cluster away from another's objects.
//!
//! The KubeVirt, CDI and snapshot types model only the fields this suite reads
//! or writes; every other field is kept verbatim in a flattened `extra` map so
//! that an object read and written back loses nothing.

pub mod api_error;
pub mod cdi;
pub mod duration;
pub mod hotplug;
pub mod kubevirt;
pub mod labels;
pub mod scope;
pub mod snapshot;

pub use scope::{ScopeError, TenantScope};
