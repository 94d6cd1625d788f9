//! Bytes from a socket, as every server port decodes them: frames split by
//! the length-delimited codec (16 MiB limit), each decoded by the server
//! transport's format into the port's envelope (a participant's client and
//! peer ports, the coordinator's port), then closed. Must never panic;
//! whatever decodes encodes again into one frame that decodes to the same
//! request; a port decodes no more than the envelope callers send with; and
//! no request is served by both of a participant's ports.
#![no_main]

use std::pin::pin;

use libfuzzer_sys::fuzz_target;
use quintet_common::frame::decode_requests;
use quintet_common::rpc::{
    AdminOnlyRequest, ClientPortRequest, CoordinatorRequest, ParticipantRequest, PeerPortRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::tokio_serde::Serializer as _;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{ClientMessage, Request};

/// One frame's body, as the transport's format writes `m`.
fn encode<Req: Serialize>(m: &ClientMessage<Req>) -> Vec<u8> {
    let mut format = pin!(Bincode::<(), ClientMessage<Req>>::default());
    let body = format
        .as_mut()
        .serialize(m)
        .expect("a decoded request re-encodes");
    body.to_vec()
}

/// What a message says, short of its deadline (which is sent relative to
/// the time it is encoded, so no two encodings of it are alike).
fn meaning<Req: Serialize>(m: &ClientMessage<Req>) -> Vec<u8> {
    match m {
        ClientMessage::Request(r) => bincode::serialize(&(0u8, r.id, &r.message)),
        ClientMessage::Cancel { request_id, .. } => bincode::serialize(&(1u8, request_id)),
        _ => bincode::serialize(&2u8),
    }
    .expect("encode")
}

/// Decodes `data` as one port would; checks that each request it got
/// re-encodes into a frame that decodes to the same request.
fn port<Req: Serialize + DeserializeOwned>(data: &[u8]) -> Vec<ClientMessage<Req>> {
    let (msgs, err) = decode_requests::<Req>(data);
    if err.is_none() {
        // Bytes without an error are the frames decoded, one after another,
        // and at most a frame's length with none of its bytes.
        let mut off = 0;
        for _ in &msgs {
            let len = u32::from_be_bytes(data[off..off + 4].try_into().unwrap());
            off += 4 + len as usize;
        }
        assert!(
            off == data.len() || off + 4 == data.len(),
            "{off} of {}",
            data.len()
        );
    }
    for m in &msgs {
        let body = encode(m);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let (back, err) = decode_requests::<Req>(&frame);
        assert!(err.is_none(), "a re-encoded request must decode: {err:?}");
        assert_eq!(back.len(), 1, "one frame, one request");
        assert_eq!(
            meaning(&back[0]),
            meaning(m),
            "decoding loses nothing it encodes"
        );
    }
    msgs
}

fuzz_target!(|data: &[u8]| {
    let sent = port::<ParticipantRequest>(data).len();
    let client = port::<ClientPortRequest>(data);
    let peer = port::<PeerPortRequest>(data);
    let coordinator = port::<CoordinatorRequest>(data).len();
    let probe = port::<AdminOnlyRequest>(data).len();
    // Each participant port's envelope is a part of the one callers encode
    // with, variant for variant: what a port decodes, that decodes too.
    assert!(sent >= client.len() && sent >= peer.len());
    // A health probe is variant 0 of every envelope: whatever a probe
    // decodes, every server port decodes too.
    assert!(client.len().min(peer.len()).min(coordinator) >= probe);
    // The same request is never a client call on the client port and a
    // peer call on the peer port: a prepare sent to the client port is
    // dropped unread, a client write sent to the peer port too.
    for (c, p) in client.iter().zip(&peer) {
        let c_kv = matches!(
            c,
            ClientMessage::Request(Request {
                message: ClientPortRequest::Kv(_),
                ..
            })
        );
        let p_peer = matches!(
            p,
            ClientMessage::Request(Request {
                message: PeerPortRequest::Peer(_),
                ..
            })
        );
        assert!(!c_kv && !p_peer, "one request decoded on both ports");
    }
});
