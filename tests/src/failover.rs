//! A TCP failover proxy inside a lab's network namespace: each connection goes to the first backend that accepts it,
//! bytes copied both ways. In front of several `kiln serve` replicas it is the one address agents dial (what a load
//! balancer or a Kubernetes Service is in production): when the replica serving a connection dies, the agent's next
//! connection reaches another.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::netns::Netns;

/// A running proxy; stops accepting when dropped.
pub struct FailoverProxy {
    listen: SocketAddr,
    stop: Arc<AtomicBool>,
    ns_file: std::fs::File,
    /// Connections sent to each backend so far.
    pub served: Arc<Vec<AtomicUsize>>,
    /// The backend tried first (the others in order after it).
    preferred: Arc<AtomicUsize>,
}

/// Moves this thread into the namespace of `ns_file` (sockets it makes afterwards live there; threads it spawns
/// inherit it).
fn enter(ns_file: &std::fs::File) -> anyhow::Result<()> {
    nix::sched::setns(ns_file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns into the lab namespace")
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

impl FailoverProxy {
    /// Listens on `listen` inside `ns` and forwards each connection to the first of `backends` that accepts it.
    ///
    /// # Errors
    /// When the namespace cannot be entered or the address not bound.
    pub fn start(ns: &Netns, listen: SocketAddr, backends: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let ns_file = std::fs::File::open(format!("/var/run/netns/{}", ns.name())).context("open the namespace")?;
        let stop = Arc::new(AtomicBool::new(false));
        let served: Arc<Vec<AtomicUsize>> = Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let preferred = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (stop, served, preferred, ns_file) =
                (stop.clone(), served.clone(), preferred.clone(), ns_file.try_clone()?);
            std::thread::spawn(move || {
                let bound = enter(&ns_file).and_then(|()| TcpListener::bind(listen).context("bind the proxy"));
                let listener = match bound {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let (backends, served) = (backends.clone(), served.clone());
                    let first = preferred.load(Ordering::SeqCst) % backends.len().max(1);
                    std::thread::spawn(move || {
                        let order = (0..backends.len()).map(|k| (first + k) % backends.len());
                        for (i, b) in order.map(|i| (i, &backends[i])) {
                            if let Ok(upstream) = TcpStream::connect_timeout(b, Duration::from_secs(2)) {
                                served[i].fetch_add(1, Ordering::Relaxed);
                                let (c2, u2) = match (client.try_clone(), upstream.try_clone()) {
                                    (Ok(c), Ok(u)) => (c, u),
                                    _ => return,
                                };
                                let back = std::thread::spawn(move || pipe(u2, c2));
                                pipe(client, upstream);
                                let _ = back.join();
                                return;
                            }
                        }
                        // No backend up: the client sees its connection closed, as behind a load balancer.
                    });
                }
            });
        }
        rx.recv().context("the proxy thread")??;
        Ok(Self {
            listen,
            stop,
            ns_file,
            served,
            preferred,
        })
    }

    /// Sends new connections to backend `i` first.
    pub fn prefer(&self, i: usize) {
        self.preferred.store(i, Ordering::SeqCst);
    }
}

impl Drop for FailoverProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop with one last connection, made inside the namespace.
        let (ns_file, listen) = (self.ns_file.try_clone(), self.listen);
        if let Ok(f) = ns_file {
            let _ = std::thread::spawn(move || {
                if enter(&f).is_ok() {
                    let _ = TcpStream::connect_timeout(&listen, Duration::from_secs(1));
                }
            })
            .join();
        }
    }
}
