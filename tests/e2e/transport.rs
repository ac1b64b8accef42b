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

/// One HTTP/2 frame: its 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or_else(|e| panic!("{e}"));
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK literal header field, not indexed, whose name is entry `index` of the static table
/// (`prefix` is the 4-bit-prefix encoding of the index). Values here are shorter than 127 bytes.
fn literal(prefix: &[u8], value: &str) -> Vec<u8> {
    let mut field = prefix.to_vec();
    field.push(u8::try_from(value.len()).unwrap_or_else(|e| panic!("{e}")));
    field.extend_from_slice(value.as_bytes());
    field
}

/// Reads frames until a PING acknowledgement carrying `payload` arrives; false if the
/// connection closed first.
async fn until_ping_ack(peer: &mut TcpStream, payload: [u8; 8]) -> bool {
    loop {
        let mut header = [0u8; 9];
        if peer.read_exact(&mut header).await.is_err() {
            return false;
        }
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut body = vec![0u8; length];
        if peer.read_exact(&mut body).await.is_err() {
            return false;
        }
        if header[3] == 0x6 && header[4] & 0x1 == 1 && body == payload {
            return true;
        }
    }
}

#[tokio::test]
async fn a_client_that_makes_the_server_reset_streams_is_disconnected() {
    // "MadeYouReset" (CVE-2025-8671): each request is accepted, then given a flow-control
    // increment that overflows its window, a stream error the server answers by resetting the
    // stream. Without a cap, a client gets this work done for free, stream after stream.
    let app = TestApp::spawn_with(|config| config.server.transport.max_local_resets = 10).await;
    let mut peer = TcpStream::connect(app.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    peer.write_all(&hello)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // POST, http, :path and content-type: a health check whose message never comes, so that
    // the server holds the stream open.
    let mut headers = vec![0x83, 0x86];
    headers.extend(literal(&[0x04], "/grpc.health.v1.Health/Check"));
    headers.extend(literal(&[0x0f, 0x10], "application/grpc"));
    let mut reset = 0;
    for stream in (1..=99u32).step_by(2) {
        let ping = u64::from(stream).to_be_bytes();
        let mut bytes = frame(0x1, 0x4, stream, &headers);
        bytes.extend(frame(0x6, 0, 0, &ping));
        if peer.write_all(&bytes).await.is_err() || !until_ping_ack(&mut peer, ping).await {
            break;
        }
        // The request is accepted by now; overflow its window.
        let overflow = frame(0x8, 0, stream, &0x7fff_ffffu32.to_be_bytes());
        if peer.write_all(&overflow).await.is_err() {
            break;
        }
        reset += 1;
    }
    if reset == 50 {
        until_closed(peer, "a connection that made it reset 50 streams").await;
    } else {
        // Closed for the resets, not for anything else the client did.
        assert!(reset >= 10, "closed after only {reset} streams");
    }
}
