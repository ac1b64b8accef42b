//! A TCP proxy between the service and PostgreSQL that a test can cut and restore, to play a
//! database outage or restart.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use chat_service::store::DatabaseUrl;
use secrecy::ExposeSecret;
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

    /// A proxy to the PostgreSQL the tests use.
    pub async fn to_postgres() -> Self {
        let url = crate::database::server_url();
        let url = url.expose();
        let authority = url
            .expose_secret()
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("127.0.0.1:5432")
            .to_owned();
        let target = tokio::net::lookup_host(authority.as_str())
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve the PostgreSQL address {authority}"));
        Self::start(target).await
    }

    /// `url` with its host and port replaced by this proxy's.
    pub fn through(&self, url: &DatabaseUrl) -> DatabaseUrl {
        let text = url.expose();
        let text = text.expose_secret();
        let authority_start = text.find("://").map_or(0, |i| i + 3);
        let path_start = text[authority_start..]
            .find('/')
            .map_or(text.len(), |i| i + authority_start);
        let host_start = text[authority_start..path_start]
            .rfind('@')
            .map_or(authority_start, |i| i + authority_start + 1);
        let rewritten = format!(
            "{}{}{}",
            &text[..host_start],
            self.addr,
            &text[path_start..]
        );
        DatabaseUrl::parse(&rewritten).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn restore(&self) {
        let mut link = self.state.lock().unwrap_or_else(|e| e.into_inner());
        link.up = true;
        link.cut = CancellationToken::new();
    }
}
