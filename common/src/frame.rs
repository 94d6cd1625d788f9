//! What a server does with the bytes of one connection, as a pure function
//! for tests and the fuzz targets in `fuzz/`.
//!
//! [`decode_requests`] splits bytes into frames with the very codec
//! [`net::serve`](crate::net::serve) reads a socket with (a 4-byte length,
//! at most [`MAX_FRAME`](crate::net::MAX_FRAME)), and decodes each frame
//! with the format the server's transport uses.

use std::io;

use serde::de::DeserializeOwned;
use tarpc::ClientMessage;
use tarpc::tokio_serde::Deserializer as _;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::bytes::BytesMut;
use tarpc::tokio_util::codec::Decoder as _;

/// Decodes `bytes` as a server reads them from one connection that the
/// peer then closes: the requests decoded, in order, and the error that
/// ended the connection, if one did (a frame over the limit, a frame that
/// is not a request, or part of a frame left over at the end). As for the
/// server, a connection that ends right after a frame's length, before
/// any of its bytes, just ends: the codec has taken the length in, and no
/// byte is left over.
pub fn decode_requests<Req: DeserializeOwned>(
    bytes: &[u8],
) -> (Vec<ClientMessage<Req>>, Option<io::Error>) {
    let mut codec = crate::net::codec();
    let mut buf = BytesMut::from(bytes);
    let mut format = std::pin::pin!(Bincode::<ClientMessage<Req>, ()>::default());
    let mut out = Vec::new();
    loop {
        // `decode_eof`: the stream has ended, so a partial frame is an error.
        let frame = match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        };
        match format.as_mut().deserialize(&frame) {
            Ok(m) => out.push(m),
            Err(e) => return (out, Some(e)),
        }
    }
}
