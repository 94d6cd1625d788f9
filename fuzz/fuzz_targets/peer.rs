//! Requests on a participant's peer port, decoded as the port decodes them
//! and served by the replication state machine (`Participant`) the way the
//! participant's driver serves them: a learner's gap question then the
//! prepare, commit, abort, probe and revoke, with reads in between. The
//! replica takes its id and cluster from the first request, so the fuzzer
//! starts inside the trust boundary a coordinator with the cluster's
//! credentials stands in. Must never panic (an overflowing version once
//! did); the applied version never goes back; a YES vote holds the batch
//! right after the applied version; and the records the steps asked to
//! persist, replayed, give back the same data and the same undecided batch
//! (persist before acknowledge).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use quintet_common::clock::Time;
use quintet_common::frame::decode_requests;
use quintet_common::protocol::participant::{Participant, Record};
use quintet_common::rpc::{PeerPortRequest, PeerRequest, Vote};
use quintet_common::types::{ClusterId, Limits, NodeId, ReadLevel};
use tarpc::{ClientMessage, Request};

/// The incarnation the seeds' views name for replica `id`.
fn incarnation(id: NodeId) -> u64 {
    0x1000 + u64::from(id)
}

/// Who a request is for, if it says.
fn addressee(r: &PeerRequest) -> Option<(ClusterId, NodeId)> {
    match r {
        PeerRequest::Prepare { req } => Some((req.cluster, req.to)),
        PeerRequest::Commit { req } | PeerRequest::Abort { req } => Some((req.cluster, req.to)),
        PeerRequest::Revoke { req } => Some((req.cluster, req.to)),
        PeerRequest::Probe { req } => Some((req.cluster, req.to)),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let (msgs, _) = decode_requests::<PeerPortRequest>(data);
    let requests: Vec<PeerRequest> = msgs
        .into_iter()
        .filter_map(|m| match m {
            ClientMessage::Request(Request {
                message: PeerPortRequest::Peer(r),
                ..
            }) => Some(r),
            _ => None,
        })
        .collect();
    let Some((cluster, id)) = requests.iter().find_map(addressee) else {
        return;
    };
    let limits = Limits::default();
    let mut p = Participant::new(id, incarnation(id), limits);
    p.registered(cluster, 0);
    let mut log: Vec<Record> = Vec::new();
    let mut now = Time(1_000_000_000);
    for r in requests {
        now = now.plus(Duration::from_millis(10));
        let applied = p.store().applied();
        match r {
            PeerRequest::Prepare { req } => {
                if let Some(target) = p.learner_gap(&req) {
                    assert!(target > applied, "a gap ends past the applied version");
                }
                let step = p.prepare(&req);
                log.extend(step.persist);
                if let Ok(Vote::Yes { .. }) = step.reply {
                    let held = p.pending().expect("a YES vote holds the batch");
                    assert_eq!(held.batch, req.batch);
                    assert_eq!(
                        p.store().applied().checked_add(1),
                        Some(req.batch.first_version)
                    );
                    assert!(req.batch.checked_last_version().is_some());
                }
            }
            PeerRequest::Commit { req } => {
                let step = p.commit(req.cluster, req.to, req.batch);
                log.extend(step.persist);
            }
            PeerRequest::Abort { req } => {
                let step = p.abort(req.cluster, req.to, req.batch);
                log.extend(step.persist);
            }
            PeerRequest::Revoke { req } => {
                if req.cluster == cluster && req.to == id {
                    let _ = p.revoke(req.incarnation, now);
                }
            }
            PeerRequest::Probe { req } => {
                let _ = p.probe(req.cluster, req.to);
            }
            // Served by the driver from its files, not by the state machine.
            PeerRequest::CatchupBegin { .. }
            | PeerRequest::CatchupChunk { .. }
            | PeerRequest::CatchupLog { .. } => {}
        }
        assert!(
            p.store().applied() >= applied,
            "the applied version went back"
        );
        let _ = p.is_current();
        for level in [ReadLevel::Linearizable, ReadLevel::Serializable] {
            let _ = p.read(b"user:1", level, now);
        }
    }
    let replayed = Participant::restore(id, incarnation(id), limits, None, log)
        .expect("the records a replica wrote replay");
    assert_eq!(replayed.store(), p.store(), "replay gives the same data");
    assert_eq!(
        replayed.pending(),
        p.pending(),
        "replay gives the same undecided batch"
    );
});
