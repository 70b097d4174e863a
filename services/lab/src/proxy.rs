//! A TCP proxy to put between a service and the broker (or the database), whose client-to-server
//! direction can be silenced: what the service sends from then on never arrives, while what the
//! server sends still does. A network fault from outside the process, as a Toxiproxy would
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
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

pub struct Proxy {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
    /// The accept loop and every connection's pumps: dropping the proxy closes them all.
    _tasks: JoinSet<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let silent = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let accepting = silent.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let silent = accepting.clone();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, &silent).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            silent,
            _tasks: tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, bytes from clients to the server are dropped: the server hears nothing.
    pub fn silence_clients(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    /// Clients are heard again (on connections made from now on; a silenced one lost bytes).
    pub fn heal(&self) {
        self.silent.store(false, Ordering::SeqCst);
    }
}

/// Pumps both ways until the client goes; then the server's side is closed too.
async fn relay(mut client: TcpStream, mut server: TcpStream, silent: &AtomicBool) {
    let (mut client_reads, mut client_writes) = client.split();
    let (mut server_reads, mut server_writes) = server.split();
    let to_server = async {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            match client_reads.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) if !silent.load(Ordering::SeqCst) => {
                    if server_writes.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
            }
        }
    };
    let to_client = tokio::io::copy(&mut server_reads, &mut client_writes);
    tokio::select! {
        () = to_server => {}
        _ = to_client => {}
    }
}
