//! A TCP proxy between the service and PostgreSQL that a test can cut and restore, to play a
//! database outage.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    pub addr: SocketAddr,
    /// Cancelled to cut every connection; replaced by a fresh token when restored.
    state: Arc<Mutex<Link>>,
}

struct Link {
    up: bool,
    cut: CancellationToken,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(Mutex::new(Link {
            up: true,
            cut: CancellationToken::new(),
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (up, cut) = {
                    let link = shared.lock().unwrap_or_else(|e| e.into_inner());
                    (link.up, link.cut.clone())
                };
                if !up {
                    // Refused: the connection is closed at once.
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Self { addr, state }
    }

    /// Breaks every open connection and refuses new ones.
    pub fn cut(&self) {
        let mut link = self.state.lock().unwrap_or_else(|e| e.into_inner());
        link.up = false;
        link.cut.cancel();
    }

    pub fn restore(&self) {
        let mut link = self.state.lock().unwrap_or_else(|e| e.into_inner());
        link.up = true;
        link.cut = CancellationToken::new();
    }
}
