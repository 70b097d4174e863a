//! A TCP proxy to put between a service and the broker (or the database), whose directions can
//! be silenced: what is sent from then on never arrives, and no one is told (no FIN, no RST), as
//! on a network that drops packets. A fault from outside the process, as a Toxiproxy would
//! inject it; the services' code knows nothing of it.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

#[derive(Default)]
struct Silence {
    /// Client to server.
    upstream: AtomicBool,
    /// Server to client.
    downstream: AtomicBool,
}

pub struct Proxy {
    addr: SocketAddr,
    silence: Arc<Silence>,
    /// The accept loop and every connection's pumps: dropping the proxy closes them all.
    _tasks: JoinSet<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let silence = Arc::new(Silence::default());
        let mut tasks = JoinSet::new();
        let accepting = silence.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let silence = accepting.clone();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, &silence).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            silence,
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

    /// Everything gets through again (a silenced connection has lost what was sent meanwhile:
    /// its ends give it up, and new connections work).
    pub fn heal(&self) {
        self.silence.upstream.store(false, Ordering::SeqCst);
        self.silence.downstream.store(false, Ordering::SeqCst);
    }
}

/// Pumps both ways until either end goes; then both sides are closed.
async fn relay(mut client: TcpStream, mut server: TcpStream, silence: &Silence) {
    let (client_reads, client_writes) = client.split();
    let (server_reads, server_writes) = server.split();
    tokio::select! {
        () = pump(client_reads, server_writes, &silence.upstream) => {}
        () = pump(server_reads, client_writes, &silence.downstream) => {}
    }
}

/// Copies `from` to `to`, dropping what arrives while `silent`.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    silent: &AtomicBool,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) if !silent.load(Ordering::SeqCst) => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
}
