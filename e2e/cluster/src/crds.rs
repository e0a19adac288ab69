//! Installing CustomResourceDefinitions: [`apply`] creates each one, or
//! replaces the spec of one that differs, then waits until the API server
//! reports them all Established.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};

use crate::Error;

/// How long [`apply`] waits for each CRD to become Established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates every CRD, or replaces the spec of one that already exists, then
/// waits until each is Established.
pub async fn apply(client: &Client, crds: &[CustomResourceDefinition]) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.name_any();
        match api.get_opt(&name).await? {
            None => {
                api.create(&PostParams::default(), crd).await?;
            }
            Some(existing) if existing.spec != crd.spec => {
                let mut updated = existing;
                updated.spec = crd.spec.clone();
                api.replace(&name, &PostParams::default(), &updated).await?;
            }
            Some(_) => {}
        }
    }
    for crd in crds {
        let name = crd.name_any();
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(ESTABLISH_TIMEOUT, established).await {
            Ok(result) => {
                result.map_err(|e| Error::Invalid(format!("waiting for CRD {name}: {e}")))?;
            }
            Err(_) => {
                return Err(Error::Invalid(format!(
                    "CRD {name} not Established after {ESTABLISH_TIMEOUT:?}"
                )));
            }
        }
    }
    Ok(())
}
