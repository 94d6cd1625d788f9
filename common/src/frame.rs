//! How a server decodes the frames of a connection into requests: tarpc's
//! bincode format, with request deadlines kept in bounds
//! ([`ServerFormat`]), and the same as a pure function of a connection's
//! bytes for tests and the fuzz targets in `fuzz/` ([`decode_requests`]).
//!
//! [`decode_requests`] splits bytes into frames with the very codec
//! [`net::serve`](crate::net::serve) reads a socket with (a 4-byte length,
//! at most [`MAX_FRAME`](crate::net::MAX_FRAME)), and decodes each frame
//! with the format the server's transport uses.
//!
//! Why the deadline needs a bound: a request carries its deadline as a
//! duration from the moment it was sent, and tarpc turns it into an
//! `Instant` when decoding (which panics past about 292 years), a
//! `SystemTime` for its span (the same), and a timer in a wheel (which
//! panics past about 2 years). A peer that sends a huge duration would
//! make the connection's task panic. A request's deadline longer than
//! [`MAX_DEADLINE`] is cut to it before tarpc sees it; callers send their
//! timeout (seconds), so no real request is changed.

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use bincode::Options as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_serde::{Deserializer, Serializer};
use tarpc::tokio_util::bytes::{Bytes, BytesMut};
use tarpc::tokio_util::codec::Decoder as _;
use tarpc::{ClientMessage, Response};

/// The longest deadline a server takes from a request; longer ones are cut
/// to this.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// The start of an encoded [`ClientMessage::Request`], as far as its
/// deadline: variant 0, then `Request { context: Context { deadline, .. },
/// .. }`, whose first field's first field is the deadline. Bincode writes
/// structs as their fields in order, so this encodes as that prefix.
#[derive(Serialize, Deserialize)]
enum Head {
    Request(Duration),
}

/// The bincode options tarpc's format uses (`tokio_serde`'s `Bincode`
/// defaults to them).
fn options() -> impl bincode::Options {
    bincode::DefaultOptions::new()
}

/// `frame` with a request's deadline cut to [`MAX_DEADLINE`], or `None`
/// if it needs no change (not a request, or a deadline within bounds;
/// whatever does not decode is left to the real decoder to refuse).
fn bound_deadline(frame: &[u8]) -> Option<Vec<u8>> {
    let mut rest = frame;
    let Ok(Head::Request(deadline)) = options().deserialize_from::<_, Head>(&mut rest) else {
        return None;
    };
    if deadline <= MAX_DEADLINE {
        return None;
    }
    let mut out = options()
        .serialize(&Head::Request(MAX_DEADLINE))
        .expect("a duration encodes");
    out.extend_from_slice(rest);
    Some(out)
}

/// The format a server's transport decodes requests and encodes responses
/// with: tarpc's bincode format, except that a request's deadline is cut
/// to [`MAX_DEADLINE`] first.
pub struct ServerFormat<Req, Resp> {
    ghost: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Default for ServerFormat<Req, Resp> {
    fn default() -> Self {
        ServerFormat { ghost: PhantomData }
    }
}

impl<Req: DeserializeOwned, Resp> Deserializer<ClientMessage<Req>> for ServerFormat<Req, Resp> {
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> io::Result<ClientMessage<Req>> {
        let format = std::pin::pin!(Bincode::<ClientMessage<Req>, ()>::default());
        match bound_deadline(src) {
            Some(bounded) => format.deserialize(&BytesMut::from(bounded.as_slice())),
            None => format.deserialize(src),
        }
    }
}

impl<Req, Resp: Serialize> Serializer<Response<Resp>> for ServerFormat<Req, Resp> {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &Response<Resp>) -> io::Result<Bytes> {
        std::pin::pin!(Bincode::<(), Response<Resp>>::default()).serialize(item)
    }
}

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
    let mut format = std::pin::pin!(ServerFormat::<Req, ()>::default());
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::rpc::{AdminOnlyRequest, AdminRequest};

    fn frame_of(m: &ClientMessage<AdminOnlyRequest>) -> Vec<u8> {
        let body = std::pin::pin!(Bincode::<(), ClientMessage<AdminOnlyRequest>>::default())
            .serialize(m)
            .unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    fn probe(id: u64, timeout: Duration) -> ClientMessage<AdminOnlyRequest> {
        let mut context = tarpc::context::current();
        context.deadline = Instant::now() + timeout;
        ClientMessage::Request(tarpc::Request {
            context,
            id,
            message: AdminOnlyRequest::Admin(AdminRequest::Health {}),
        })
    }

    fn deadline(m: &ClientMessage<AdminOnlyRequest>) -> Duration {
        match m {
            ClientMessage::Request(r) => {
                r.context.deadline.saturating_duration_since(Instant::now())
            }
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn requests_decode_with_their_deadline_and_a_far_one_is_cut() {
        let bytes = [
            frame_of(&probe(1, Duration::from_secs(5))),
            frame_of(&probe(2, Duration::from_secs(10 * 365 * 24 * 3600))),
        ]
        .concat();
        let (msgs, err) = decode_requests::<AdminOnlyRequest>(&bytes);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(msgs.len(), 2);
        let ids: Vec<u64> = msgs
            .iter()
            .map(|m| match m {
                ClientMessage::Request(r) => r.id,
                _ => 0,
            })
            .collect();
        assert_eq!(ids, [1, 2]);
        let kept = deadline(&msgs[0]);
        assert!(kept > Duration::from_secs(4) && kept <= Duration::from_secs(5));
        let cut = deadline(&msgs[1]);
        assert!(cut > MAX_DEADLINE - Duration::from_secs(60) && cut <= MAX_DEADLINE);
    }

    /// Found by the `frame` fuzz target (`fuzz/corpus/frame/regress-
    /// deadline-overflow`): a request whose deadline is some 10^20 seconds
    /// away made tarpc's decoder panic ("overflow when adding duration to
    /// instant") on every port.
    const FAR_DEADLINE: [u8; 32] = [
        0x00, 0x00, 0x00, 0x1c, 0x00, 0xfd, 0x03, 0xae, 0x3c, 0x89, 0x88, 0x88, 0x88, 0x88, 0x88,
        0x8a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x01, 0x01,
        0x00, 0x00,
    ];

    #[test]
    fn a_deadline_past_any_instant_is_cut_not_a_panic() {
        use crate::rpc::{
            ClientPortRequest, CoordinatorRequest, ParticipantRequest, PeerPortRequest,
        };
        // The fuzzer's input, on every port: an error or requests, no panic.
        let _ = decode_requests::<ParticipantRequest>(&FAR_DEADLINE);
        let _ = decode_requests::<ClientPortRequest>(&FAR_DEADLINE);
        let _ = decode_requests::<PeerPortRequest>(&FAR_DEADLINE);
        let _ = decode_requests::<CoordinatorRequest>(&FAR_DEADLINE);
        let _ = decode_requests::<AdminOnlyRequest>(&FAR_DEADLINE);

        // A real probe whose deadline says u64::MAX seconds: its body is
        // variant 0, then the seconds (10 years: varint 252 and 4 bytes),
        // which become 253 and 8 bytes.
        let real = frame_of(&probe(9, Duration::from_secs(10 * 365 * 24 * 3600)));
        assert_eq!(real[4..6], [0, 252], "the layout this test relies on");
        let mut body = vec![0, 253];
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        body.extend_from_slice(&real[10..]);
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let (msgs, err) = decode_requests::<AdminOnlyRequest>(&bytes);
        assert!(err.is_none(), "{err:?}");
        assert!(matches!(
            msgs[..],
            [ClientMessage::Request(tarpc::Request { id: 9, .. })]
        ));
        assert!(deadline(&msgs[0]) <= MAX_DEADLINE);
    }

    #[test]
    fn a_cancel_and_garbage_pass_through_untouched() {
        let cancel: ClientMessage<AdminOnlyRequest> = ClientMessage::Cancel {
            trace_context: Default::default(),
            request_id: 3,
        };
        let (msgs, err) = decode_requests::<AdminOnlyRequest>(&frame_of(&cancel));
        assert!(err.is_none(), "{err:?}");
        assert!(matches!(
            msgs[..],
            [ClientMessage::Cancel { request_id: 3, .. }]
        ));
        let (msgs, err) = decode_requests::<AdminOnlyRequest>(&[0, 0, 0, 2, 9, 9]);
        assert!(msgs.is_empty() && err.is_some());
    }
}
