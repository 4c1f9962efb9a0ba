//! A network server running in the background on a tokio runtime of its own, until stopped.
//!
//! Lifecycle: [`Server::spawn`] binds the address (port 0 picks one: [`Server::addr`] says which)
//! before it returns, so a bad address is a start-up error and clients may connect at once. The
//! server's future runs on its own runtime (a bounded number of worker threads, so a burst of
//! queries cannot take every core) until [`Server::stop`]: the future is told through its
//! [`Shutdown`] and given [`GRACE`] to finish what is in flight (long-lived streams such as
//! Server-Sent Events do not end by themselves), then the runtime is shut down and its thread
//! joined. Dropping a `Server` without `stop` signals it the same way but does not wait.

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

/// How long a stopping server may take to finish the requests in flight.
pub const GRACE: Duration = Duration::from_secs(2);

/// Told when the server is to stop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once the server is asked to stop (or its [`Server`] is gone).
    pub async fn requested(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Where a server listens: an address, and whether any free port on its host will do when
/// that one is taken (`vendflow demo`'s defaults, so that two demos can run side by side).
/// The fallback happens at the bind itself: a check made earlier could be overtaken by
/// another process between the check and the bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub any_port_if_taken: bool,
}

impl Listen {
    /// `addr`, or any free port on its host if it is taken.
    pub fn or_any_port(addr: SocketAddr) -> Listen {
        Listen {
            addr,
            any_port_if_taken: true,
        }
    }

    /// Binds, falling back to any free port when allowed.
    pub fn bind(self) -> std::io::Result<std::net::TcpListener> {
        match std::net::TcpListener::bind(self.addr) {
            Err(e) if self.any_port_if_taken && e.kind() == std::io::ErrorKind::AddrInUse => {
                let listener = std::net::TcpListener::bind((self.addr.ip(), 0))?;
                if let Ok(instead) = listener.local_addr() {
                    tracing::warn!(taken = %self.addr, %instead, "address in use; listening on another port");
                }
                Ok(listener)
            }
            other => other,
        }
    }
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Listen {
        Listen {
            addr,
            any_port_if_taken: false,
        }
    }
}

/// A server on a runtime and thread of its own.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and runs `serve(listener, shutdown)` on a runtime of `workers` threads named
    /// `name`. `serve` should stop accepting once `shutdown` resolves.
    pub fn spawn<F, Fut>(
        name: &str,
        addr: impl Into<Listen>,
        workers: usize,
        serve: F,
    ) -> std::io::Result<Server>
    where
        F: FnOnce(tokio::net::TcpListener, Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let listener = addr.into().bind()?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(name)
            .enable_all()
            .build()?;
        let (stop, told) = watch::channel(false);
        let deadline = Shutdown(told.clone());
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(addr = %local, error = %e, "cannot serve");
                            return;
                        }
                    };
                    let serving = serve(listener, Shutdown(told));
                    // Past the grace period after a stop, whatever is still open is cut.
                    let cut = async move {
                        deadline.requested().await;
                        tokio::time::sleep(GRACE).await;
                    };
                    tokio::select! {
                        () = serving => {}
                        () = cut => tracing::debug!(addr = %local, "connections still open at stop were closed"),
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(200));
            })?;
        Ok(Server {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (at most [`GRACE`]), and joins the thread.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(addr = %self.addr, "a server thread panicked");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_stopped_server_no_longer_accepts_and_its_thread_is_joined() {
        let server = Server::spawn(
            "test-server",
            SocketAddr::from(([127, 0, 0, 1], 0)),
            1,
            |listener, shutdown| async move {
                let accept = async {
                    while let Ok((mut socket, _)) = listener.accept().await {
                        use tokio::io::AsyncWriteExt;
                        let _ = socket.write_all(b"hello").await;
                    }
                };
                tokio::select! {
                    () = accept => {}
                    () = shutdown.requested() => {}
                }
            },
        )
        .expect("spawn");
        let addr = server.addr();
        assert_ne!(addr.port(), 0, "port 0 resolves to the bound port");
        let mut socket = std::net::TcpStream::connect(addr).expect("connect");
        let mut text = String::new();
        socket.read_to_string(&mut text).expect("read");
        assert_eq!(text, "hello");
        let started = std::time::Instant::now();
        server.stop();
        assert!(
            started.elapsed() < GRACE,
            "a server that honours shutdown stops at once"
        );
        let refused = std::net::TcpStream::connect(addr)
            .and_then(|mut s| s.write_all(b"x").and_then(|()| s.read(&mut [0; 1])));
        assert!(
            matches!(refused, Err(_) | Ok(0)),
            "nothing answers after stop"
        );
    }
}
