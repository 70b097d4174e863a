//! A TCP proxy to put between a service and the broker (or the database) that injects network
//! faults on demand: silence (what is sent from then on never arrives, and no one is told: no
//! FIN, no RST, as on a network that drops packets), latency (every chunk held back), and reset
//! (every connection torn down with an RST). Faults from outside the process, as a Toxiproxy
//! would inject them; the services' code knows nothing of them.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

#[derive(Default)]
struct Silence {
    /// Client to server.
    upstream: AtomicBool,
    /// Server to client.
    downstream: AtomicBool,
    /// Added to every chunk each way, in milliseconds.
    latency_ms: AtomicU64,
}

pub struct Proxy {
    addr: SocketAddr,
    silence: Arc<Silence>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    /// The accept loop and every connection's pumps: dropping the proxy closes them all.
    _tasks: JoinSet<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let silence = Arc::new(Silence::default());
        let (resets, _) = watch::channel(0);
        let mut tasks = JoinSet::new();
        let accepting = silence.clone();
        let reset_watch = resets.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let silence = accepting.clone();
                let reset = reset_watch.subscribe();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, &silence, reset).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            silence,
            resets,
            _tasks: tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, bytes from clients to the server are dropped: the server hears nothing.
    pub fn silence_clients(&self) {
        self.silence.upstream.store(true, Ordering::SeqCst);
    }

    /// From now on, nothing gets through either way: both ends hear nothing, and neither is
    /// told (a half-open connection, as when a network drops packets).
    pub fn silence(&self) {
        self.silence.upstream.store(true, Ordering::SeqCst);
        self.silence.downstream.store(true, Ordering::SeqCst);
    }

    /// From now on, every chunk each way is held back `latency` (a slow network).
    pub fn slow(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.silence.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Tears every open connection down with an RST to the client (new ones still work).
    pub fn reset(&self) {
        self.resets.send_modify(|generation| *generation += 1);
    }

    /// Everything gets through again, at once (a silenced connection has lost what was sent
    /// meanwhile: its ends give it up, and new connections work).
    pub fn heal(&self) {
        self.silence.upstream.store(false, Ordering::SeqCst);
        self.silence.downstream.store(false, Ordering::SeqCst);
        self.silence.latency_ms.store(0, Ordering::SeqCst);
    }
}

/// Pumps both ways until either end goes (both sides are closed then), or until a reset (the
/// client's side is closed with an RST).
async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    silence: &Silence,
    mut reset: watch::Receiver<u64>,
) {
    let reset_now = {
        let (client_reads, client_writes) = client.split();
        let (server_reads, server_writes) = server.split();
        tokio::select! {
            () = pump(client_reads, server_writes, &silence.upstream, &silence.latency_ms) => false,
            () = pump(server_reads, client_writes, &silence.downstream, &silence.latency_ms) => false,
            _ = reset.changed() => true,
        }
    };
    if reset_now {
        // Linger zero: closing sends an RST, not a FIN.
        let _ = client.set_zero_linger();
    }
}

/// Copies `from` to `to`, dropping what arrives while `silent`, holding each chunk back the
/// latency set.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    silent: &AtomicBool,
    latency_ms: &AtomicU64,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) if !silent.load(Ordering::SeqCst) => {
                let latency = latency_ms.load(Ordering::SeqCst);
                if latency > 0 {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                }
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
}

/// A URL (`scheme://user:pass@host:port/path`) cut around its `host:port`.
fn around_host(url: &str) -> (&str, &str, &str) {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let start = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |at| after_scheme + at + 1);
    let end = url[start..].find('/').map_or(url.len(), |at| start + at);
    (&url[..start], &url[start..end], &url[end..])
}

/// Where `url` (AMQP or Postgres) connects to; `default_port` when it names none.
pub fn address_of(url: &str, default_port: u16) -> io::Result<SocketAddr> {
    let (_, host, _) = around_host(url);
    let with_port = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&with_port)?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolves to nothing"),
            )
        })
}

/// `url` connecting through `proxy` instead.
pub fn through(url: &str, proxy: SocketAddr) -> String {
    let (before, _, after) = around_host(url);
    format!("{before}{proxy}{after}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_pointed_at_the_proxy_with_its_credentials_and_path() {
        let proxy: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        assert_eq!(
            through("amqp://payment:pw@127.0.0.1:5672/%2f?heartbeat=3", proxy),
            "amqp://payment:pw@127.0.0.1:40000/%2f?heartbeat=3"
        );
        assert_eq!(
            through("postgres://postgres@localhost/shop_1", proxy),
            "postgres://postgres@127.0.0.1:40000/shop_1"
        );
        assert_eq!(
            address_of("postgres://postgres@127.0.0.1/x", 5432).expect("resolves"),
            "127.0.0.1:5432".parse().expect("an address")
        );
    }
}
