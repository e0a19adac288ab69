//! [`Netns`]: the lab's own network namespace. A thread of the lab process
//! unshares it and stays in it; the only interface is its loopback device,
//! and every range the lab hands out is routed to that device as `local`
//! (any address in it can be bound, and a connection to an address nobody
//! listens on is refused at once). No interface leads to any other
//! namespace and there is no default route, so nothing sent in it can leave
//! the machine.
//!
//! A socket belongs to the namespace of the thread that created it, for its
//! whole life. So the namespace's thread makes sockets on request
//! ([`Netns::bind_tcp`], [`Netns::bind_udp`], [`Netns::connect_tcp`],
//! [`Netns::connect_udp`]) and hands them to tokio; the lab's tasks use them
//! from any thread. `DIR/netns` links to the thread's namespace file, so
//! `nsenter --net=DIR/netns` enters it while the lab runs; it vanishes with
//! the lab's last socket.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

use ipnet::IpNet;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::Error;

type Job = Box<dyn FnOnce() + Send>;

/// The lab's network namespace and its socket-making thread.
#[derive(Debug)]
pub struct Netns {
    jobs: mpsc::Sender<Job>,
    link: PathBuf,
}

impl Netns {
    /// Unshares a network namespace on a thread of its own, brings its
    /// loopback device up, routes each of `local` to it and links `link` to
    /// the namespace.
    pub async fn create(link: &Path, local: &[IpNet]) -> Result<Netns, Error> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, started) = tokio::sync::oneshot::channel();
        let routes = local.to_vec();
        std::thread::Builder::new()
            .name("lab-netns".to_string())
            .spawn(move || {
                let setup = enter_new_namespace(&routes);
                let ok = setup.is_ok();
                if ready.send(setup).is_err() || !ok {
                    return;
                }
                // Until the last Netns handle is gone.
                while let Ok(job) = queue.recv() {
                    job();
                }
            })
            .map_err(|e| Error::Io {
                action: "start the network namespace thread for",
                path: link.to_path_buf(),
                source: e,
            })?;
        let namespace = started.await.map_err(|_| Error::NamespaceGone)??;
        match std::fs::remove_file(link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io {
                    action: "remove the stale",
                    path: link.to_path_buf(),
                    source: e,
                });
            }
            _ => {}
        }
        std::os::unix::fs::symlink(&namespace, link).map_err(|e| Error::Io {
            action: "link the network namespace at",
            path: link.to_path_buf(),
            source: e,
        })?;
        Ok(Netns {
            jobs,
            link: link.to_path_buf(),
        })
    }

    /// `DIR/netns`: what `nsenter --net=` takes.
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// Runs `job` on the namespace's thread.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(job());
            }))
            .map_err(|_| Error::NamespaceGone)?;
        rx.await.map_err(|_| Error::NamespaceGone)
    }

    /// A socket of the namespace, non-blocking.
    async fn socket(&self, family: SocketAddr, kind: Type) -> Result<Socket, Error> {
        let protocol = if kind == Type::STREAM {
            Protocol::TCP
        } else {
            Protocol::UDP
        };
        self.run(move || {
            let s = Socket::new(Domain::for_address(family), kind, Some(protocol))?;
            s.set_nonblocking(true)?;
            s.set_cloexec(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .await?
        .map_err(Error::socket("create a socket for", family))
    }

    /// A TCP listener on `addr` in the namespace.
    pub async fn bind_tcp(&self, addr: SocketAddr) -> Result<TcpListener, Error> {
        let s = self.socket(addr, Type::STREAM).await?;
        let listen = || {
            any_local_address(&s, addr)?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            TcpListener::from_std(s.into())
        };
        listen().map_err(Error::socket("listen on", addr))
    }

    /// A UDP socket bound to `addr` in the namespace.
    pub async fn bind_udp(&self, addr: SocketAddr) -> Result<UdpSocket, Error> {
        let s = self.socket(addr, Type::DGRAM).await?;
        let bind = || {
            any_local_address(&s, addr)?;
            s.bind(&addr.into())?;
            UdpSocket::from_std(s.into())
        };
        bind().map_err(Error::socket("bind", addr))
    }

    /// A TCP connection to `to` from inside the namespace, from address
    /// `from` when given (any address of the lab's ranges is local).
    pub async fn connect_tcp(
        &self,
        to: SocketAddr,
        from: Option<IpAddr>,
    ) -> Result<TcpStream, Error> {
        let s = self.socket(to, Type::STREAM).await?;
        let stream = async {
            if let Some(ip) = from.filter(|ip| ip.is_ipv4() == to.is_ipv4()) {
                let from = SocketAddr::new(ip, 0);
                any_local_address(&s, from)?;
                s.bind(&from.into())?;
            }
            match s.connect(&SockAddr::from(to)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(Errno::EINPROGRESS as i32) => {}
                Err(e) => return Err(e),
            }
            let stream = TcpStream::from_std(s.into())?;
            stream.writable().await?;
            match stream.take_error()? {
                Some(e) => Err(e),
                None => Ok(stream),
            }
        };
        stream.await.map_err(Error::socket("connect to", to))
    }

    /// A UDP socket of the namespace connected to `to`, from address `from`
    /// when given.
    pub async fn connect_udp(
        &self,
        to: SocketAddr,
        from: Option<IpAddr>,
    ) -> Result<UdpSocket, Error> {
        let s = self.socket(to, Type::DGRAM).await?;
        let connect = || {
            if let Some(ip) = from.filter(|ip| ip.is_ipv4() == to.is_ipv4()) {
                let from = SocketAddr::new(ip, 0);
                any_local_address(&s, from)?;
                s.bind(&from.into())?;
            }
            s.connect(&SockAddr::from(to))?;
            UdpSocket::from_std(s.into())
        };
        connect().map_err(Error::socket("connect to", to))
    }
}

/// Lets `s` bind an address of a local range: IPv4 allows that as such,
/// IPv6 binds only assigned addresses unless told otherwise.
fn any_local_address(s: &Socket, addr: SocketAddr) -> std::io::Result<()> {
    if addr.is_ipv6() {
        s.set_freebind_v6(true)?;
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
    }
}

/// Moves the calling thread into a new network namespace with its loopback
/// device up and `routes` local to it; returns the namespace's file.
fn enter_new_namespace(routes: &[IpNet]) -> Result<PathBuf, Error> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(Error::Namespace)?;
    // Children inherit the namespace of the thread that starts them.
    ip(&["link", "set", "lo", "up"])?;
    for net in routes {
        let family = if net.addr().is_ipv4() { "-4" } else { "-6" };
        ip(&[
            family,
            "route",
            "add",
            "local",
            &net.to_string(),
            "dev",
            "lo",
        ])?;
    }
    Ok(PathBuf::from(format!(
        "/proc/{}/task/{}/ns/net",
        nix::unistd::getpid(),
        nix::unistd::gettid()
    )))
}

/// Runs iproute2's `ip` with `args` (in the caller's namespace).
fn ip(args: &[&str]) -> Result<(), Error> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            command: command.clone(),
            message: format!("{e} (iproute2 installs it)"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
