//! Free loopback ports for the control plane's listeners.

use crate::Error;

/// A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's
/// choice for port 0). Another process could take it before ours binds it;
/// the starters retry with a new port when a program reports it in use.
pub fn free() -> Result<u16, Error> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(Error::io("bind", "127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("read the address of", "127.0.0.1:0"))?
        .port();
    Ok(port)
}
