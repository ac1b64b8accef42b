//! The protobuf codec of the `chat.v1` services (build.rs names it): prost's, with a small first
//! buffer for what a call sends. tonic allocates that buffer for every call and keeps it while a
//! stream is open; a streamed reply's events are tens of bytes, so its default of 8 KiB was a
//! quarter of what an open stream cost. Larger messages grow the buffer as they need.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first size of a call's send buffer: a few events of a reply.
const SEND_BUFFER_BYTES: usize = 512;
/// What tonic gathers before handing bytes to HTTP/2 (its default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(
            SEND_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        // A request is read whole before it is handled, and its buffer freed: tonic's default.
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}
