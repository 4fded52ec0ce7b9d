//! A TCP proxy on 127.0.0.1 between the pipeline's clients and the broker, which the
//! runner tells to delay, swallow or cut the traffic: network faults without network
//! namespaces or root. The broker advertises the proxy's address, so every client — the
//! first connection and every one the metadata points it to — goes through it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Carries every byte at once.
    None,
    /// Holds each chunk `base` plus up to `jitter` before passing it on.
    Latency { base: Duration, jitter: Duration },
    /// Takes the bytes and passes nothing on, in either direction: a peer that vanished
    /// without closing (no RST, no FIN), until the fault ends.
    Blackhole,
}

pub struct FaultProxy {
    pub address: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    /// Bumped to cut every open connection with a TCP reset.
    resets: watch::Sender<u64>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port; `upstream` is set once the broker is known.
    pub async fn bind() -> anyhow::Result<(Self, Upstream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let fault = Arc::new(Mutex::new(Fault::None));
        let (resets, _) = watch::channel(0u64);
        let (upstream_sender, upstream) = watch::channel(None::<SocketAddr>);
        let accepting = tokio::spawn(accept(
            listener,
            upstream,
            fault.clone(),
            resets.subscribe(),
        ));
        Ok((
            Self {
                address,
                fault,
                resets,
                accepting,
            },
            Upstream(upstream_sender),
        ))
    }

    pub fn set(&self, fault: Fault) {
        *self
            .fault
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fault;
    }

    /// Cuts every open connection with a reset (RST), as a middlebox that lost its state.
    pub fn reset_connections(&self) {
        self.resets.send_modify(|generation| *generation += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Where the proxy forwards to, told once the broker listens.
pub struct Upstream(watch::Sender<Option<SocketAddr>>);

impl Upstream {
    pub fn set(&self, broker: SocketAddr) {
        self.0.send_replace(Some(broker));
    }
}

async fn accept(
    listener: TcpListener,
    upstream: watch::Receiver<Option<SocketAddr>>,
    fault: Arc<Mutex<Fault>>,
    resets: watch::Receiver<u64>,
) {
    let mut connection = 0u64;
    while let Ok((client, _)) = listener.accept().await {
        connection += 1;
        let Some(broker) = *upstream.borrow() else {
            continue; // not forwarding yet: the client sees its connection closed
        };
        let (fault, mut resets) = (fault.clone(), resets.clone());
        resets.mark_unchanged();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(broker).await else {
                return; // the broker is down: so is the client's connection
            };
            let mut client = client;
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let seed = connection.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let reset = {
                let (client_read, client_write) = client.split();
                let (server_read, server_write) = server.split();
                tokio::select! {
                    () = pump(client_read, server_write, &fault, seed) => false,
                    () = pump(server_read, client_write, &fault, seed ^ 0xff) => false,
                    _ = resets.changed() => true,
                }
            };
            if reset {
                // Closed with SO_LINGER 0: a RST, not a FIN, on both sides.
                let _ = client.set_zero_linger();
                let _ = server.set_zero_linger();
            }
        });
    }
}

/// Copies one direction, applying the fault in force to each chunk.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    fault: &Mutex<Fault>,
    mut seed: u64,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            let _ = to.shutdown().await;
            return;
        }
        let current = *fault
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match current {
            Fault::None => {}
            Fault::Latency { base, jitter } => {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let extra = jitter.as_millis() as u64;
                let wait = base + Duration::from_millis(seed % (extra + 1));
                tokio::time::sleep(wait).await;
            }
            Fault::Blackhole => continue,
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
