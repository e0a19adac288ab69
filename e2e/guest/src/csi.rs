//! The gRPC side: a channel to the driver's unix socket, and the CSI calls
//! the sidecars make, each sent with the sidecar's `--timeout` as the gRPC
//! deadline (as the real sidecars do).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kubevirt_csi_proto::v1::controller_client::ControllerClient;
use kubevirt_csi_proto::v1::identity_client::IdentityClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::GuestError;

fn endpoint() -> Endpoint {
    // The URI is not used for a unix connector; it only has to parse.
    Endpoint::from_static("http://csi.sock")
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
        }
    })
}

/// Connect to the CSI socket at `path` now (fails if nothing listens there).
pub async fn connect(path: &Path) -> Result<Channel, GuestError> {
    endpoint()
        .connect_with_connector(connector(path.to_path_buf()))
        .await
        .map_err(|e| GuestError::Connect {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// A channel that connects (and reconnects) on use.
pub fn connect_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path.to_path_buf()))
}

/// The clients a sidecar uses, with its call timeout.
#[derive(Clone, Debug)]
pub struct Csi {
    pub controller: ControllerClient<Channel>,
    pub identity: IdentityClient<Channel>,
    pub timeout: Duration,
}

impl Csi {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            controller: ControllerClient::new(channel.clone()),
            identity: IdentityClient::new(channel),
            timeout,
        }
    }

    /// Wrap a message in a request carrying the deadline.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }
}
