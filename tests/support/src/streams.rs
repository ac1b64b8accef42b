//! Reading a server stream the way the tests do: to its end, or to the error it ends with.

use tonic::{Status, Streaming};

/// Every message of `stream` until it ends, and the status it failed with, if it did.
pub async fn read_to_end<T>(stream: &mut Streaming<T>) -> (Vec<T>, Option<Status>) {
    let mut messages = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => return (messages, None),
            Err(status) => return (messages, Some(status)),
        }
    }
}

/// The status `stream` fails with, whatever it sent before; a stream that ends well fails the
/// test.
pub async fn error_at_end<T>(stream: &mut Streaming<T>) -> Status {
    match read_to_end(stream).await {
        (_, Some(status)) => status,
        (_, None) => panic!("the stream ended without an error"),
    }
}
