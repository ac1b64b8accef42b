//! What one connection may cost: idle sockets, unanswered pings, stream counts and header sizes
//! are all bounded, on the real server's ports, with raw clients that misbehave on purpose.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::support::TestApp;

/// Long enough for anything that is going to happen; a test that waits longer has failed.
const PATIENCE: Duration = Duration::from_secs(20);

/// Reads until the server closes the connection, failing if it does not within [`PATIENCE`].
async fn until_closed(mut stream: TcpStream, what: &str) {
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept {what} open");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_on_both_ports() {
    let app = TestApp::spawn_with(|config| {
        config.server.transport.request_head_timeout = Duration::from_millis(200);
    })
    .await;
    for addr in [app.addr, app.metrics_addr] {
        let silent = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        until_closed(silent, &format!("a silent connection to {addr}")).await;
    }
    // A connection that talks is not affected.
    assert!(app.scrape_metrics().await.contains("chat_active_streams"));
}

#[tokio::test]
async fn headers_sent_a_byte_at_a_time_are_cut_off_on_both_ports() {
    let app = TestApp::spawn_with(|config| {
        config.server.transport.request_head_timeout = Duration::from_millis(300);
    })
    .await;
    for addr in [app.addr, app.metrics_addr] {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (reader, mut writer) = stream.into_split();
        // A client that keeps the server waiting for the end of its headers, for ever.
        let dribbling = tokio::spawn(async move {
            let _ = writer
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            while writer.write_all(b"a").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut reader = reader;
        let mut buffer = [0u8; 1024];
        let closed = tokio::time::timeout(PATIENCE, async {
            while let Ok(read) = reader.read(&mut buffer).await {
                if read == 0 {
                    return;
                }
            }
        })
        .await;
        dribbling.abort();
        assert!(closed.is_ok(), "{addr} waited for the headers' end");
    }
}

#[tokio::test]
async fn the_metrics_port_serves_one_request_per_connection() {
    // So that the request-head deadline bounds every request on it, not only the first.
    let app = TestApp::spawn().await;
    let mut scraper = TcpStream::connect(app.metrics_addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    scraper
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    until_closed(scraper, "a scrape's connection").await;
}

#[tokio::test]
async fn a_peer_that_does_not_answer_pings_is_disconnected() {
    let app = TestApp::spawn_with(|config| {
        config.server.transport.http2_keepalive_interval = Duration::from_millis(200);
        config.server.transport.http2_keepalive_timeout = Duration::from_millis(200);
    })
    .await;
    let mut peer = TcpStream::connect(app.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The HTTP/2 preface and an empty SETTINGS frame; after that the peer only listens.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    until_closed(peer, "a connection whose peer ignores pings").await;
}

/// An HTTP/2 connection to the server, once the server's settings have arrived.
async fn http2_client(app: &TestApp) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(app.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap_or_else(|e| panic!("{e}"));
    // One exchange, so that the server's SETTINGS frame has been read.
    let (response, _) = client
        .send_request(request(&app.addr.to_string(), &[]), true)
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = response.await;
    client.ready().await.unwrap_or_else(|e| panic!("{e}"))
}

/// A health check, with extra headers.
fn request(authority: &str, headers: &[(&str, String)]) -> http::Request<()> {
    let mut request =
        http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.body(()).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn the_server_announces_how_many_streams_a_connection_may_open() {
    let app = TestApp::spawn_with(|config| {
        config.server.transport.max_concurrent_streams = 7;
    })
    .await;
    let client = http2_client(&app).await;
    assert_eq!(client.current_max_send_streams(), 7);
}

/// Whether the server refused a request with `padding` bytes of extra header.
async fn refuses_header_padding(app: &TestApp, padding: usize) -> bool {
    let mut client = http2_client(app).await;
    let headers = [("x-padding", "p".repeat(padding))];
    match client.send_request(request(&app.addr.to_string(), &headers), true) {
        Err(_) => true,
        Ok((response, _)) => match tokio::time::timeout(PATIENCE, response)
            .await
            .unwrap_or_else(|_| panic!("no answer to a request with {padding} bytes of header"))
        {
            Err(_) => true,
            Ok(response) => response.status() == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        },
    }
}

#[tokio::test]
async fn a_header_block_beyond_the_limit_is_refused() {
    let app = TestApp::spawn_with(|config| {
        config.server.transport.max_header_bytes = 4096;
    })
    .await;
    assert!(
        !refuses_header_padding(&app, 2048).await,
        "2 KiB of header was refused"
    );
    assert!(
        refuses_header_padding(&app, 8192).await,
        "8 KiB of header was accepted"
    );
}

/// The timer kinds of this machine's established TCP sockets whose local port is `port`, from
/// /proc/net/tcp: 2 is the keepalive timer, 0 none.
fn timers_of_sockets_on(port: u16) -> Vec<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_else(|e| panic!("{e}"));
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let established = *fields.get(3)? == "01";
            let timer = fields.get(5)?.split(':').next()?;
            (established && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| timer.parse().ok())
                .flatten()
        })
        .collect()
}

#[tokio::test]
async fn accepted_connections_have_tcp_keepalive() {
    let app = TestApp::spawn_with(|config| {
        config.server.transport.tcp_keepalive = Duration::from_secs(7);
    })
    .await;
    // The test's own channel is one accepted connection; any others are the test's too.
    let _client = http2_client(&app).await;
    let timers = timers_of_sockets_on(app.addr.port());
    assert!(!timers.is_empty(), "no accepted connection found");
    assert!(
        timers.iter().all(|&timer| timer == 2),
        "accepted sockets without a keepalive timer: {timers:?}"
    );
}
