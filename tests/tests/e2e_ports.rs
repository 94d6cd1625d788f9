//! End-to-end: a participant's client port never serves the peer protocol.
//! A tarpc `Peer` client sending `prepare` to the client port is dropped
//! unread (the port cannot even decode it) and nothing is prepared; the
//! same call at the peer port is served (and refused there for the wrong
//! cluster id, as before); a client call at the peer port is dropped too.
//! Health answers on both ports.

use std::time::Duration;

use quintet_client::Client;
use quintet_client::client::health;
use quintet_client::local::Node;
use quintet_common::error::Error;
use quintet_common::net::{Link, context_with_timeout};
use quintet_common::protocol::view::View;
use quintet_common::rpc::{
    ParticipantRequest, ParticipantResponse, PrepareRequest, kv_conn, peer_conn,
};
use quintet_common::types::{Batch, BatchId, ClusterId, Op};
use quintet_tests::cluster::start_cluster;

type ParticipantLink = Link<ParticipantRequest, ParticipantResponse>;

/// A prepare a member would accept but for its cluster id: the next batch
/// of the current epoch, one put.
fn prepare_for(cluster: ClusterId, epoch: u64, next_version: u64) -> PrepareRequest {
    PrepareRequest {
        cluster,
        to: 1,
        batch: Batch {
            id: BatchId {
                epoch,
                seq: 1_000_000,
            },
            first_version: next_version,
            ops: vec![Op::Put {
                key: b"injected".to_vec(),
                value: b"by a client".to_vec(),
            }],
        },
        last_committed: None,
        view: View {
            epoch,
            members: Vec::new(),
        },
        prev: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_refuses_the_peer_protocol_and_the_peer_port_serves_it() {
    let cluster = start_cluster(3, &[]).await;
    let client = Client::new(&cluster.endpoints(), Duration::from_secs(5)).unwrap();
    client.put(b"before", b"1").await.unwrap();
    let before = client.status_at(0).await.unwrap();
    let cluster_id = before.cluster.expect("registered");

    // The peer protocol at the client port, with the right cluster id.
    let client_port: ParticipantLink =
        Link::new(cluster.addr(Node::Participant(1)), Duration::from_secs(2));
    let req = prepare_for(cluster_id, before.epoch, before.applied + 1);
    let answer = client_port
        .call(|ch| async move {
            peer_conn(ch)
                .prepare(context_with_timeout(Duration::from_secs(2)), req)
                .await
        })
        .await;
    assert!(
        answer.is_err(),
        "the client port must not serve prepare, it answered {answer:?}"
    );

    // Nothing was prepared or applied anywhere.
    let statuses = client.status_all().await;
    for s in statuses {
        let s = s.unwrap();
        assert!(
            s.pending.is_empty(),
            "replica {} holds {:?}",
            s.id,
            s.pending
        );
        assert_eq!(s.applied, before.applied, "replica {}", s.id);
    }
    let got = client
        .get(b"injected", quintet_common::types::ReadLevel::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.value, None);

    // The peer port serves the same protocol: a prepare of another cluster
    // is refused by the replica itself, not by the transport.
    let peer_port: ParticipantLink = Link::new(cluster.peer_addr(1), Duration::from_secs(2));
    let req = prepare_for(
        ClusterId(cluster_id.0 ^ 1),
        before.epoch,
        before.applied + 1,
    );
    let answer = peer_port
        .call(|ch| async move {
            peer_conn(ch)
                .prepare(context_with_timeout(Duration::from_secs(2)), req)
                .await
        })
        .await;
    match answer {
        Ok(Err(Error::ClusterMismatch(_))) => {}
        other => panic!("the peer port must serve prepare and refuse the cluster id: {other:?}"),
    }

    // A client call at the peer port is dropped as well.
    let kv_at_peer: ParticipantLink = Link::new(cluster.peer_addr(2), Duration::from_secs(2));
    let answer = kv_at_peer
        .call(|ch| async move {
            kv_conn(ch)
                .status(context_with_timeout(Duration::from_secs(2)), None)
                .await
        })
        .await;
    assert!(
        answer.is_err(),
        "the peer port must not serve client calls: {answer:?}"
    );

    // Health (what `quintet health` and the healthchecks ask) on both ports.
    for addr in [cluster.addr(Node::Participant(3)), cluster.peer_addr(3)] {
        let h = health(&addr, Duration::from_secs(2)).await.unwrap();
        assert!(h.ready, "{addr}: {h:?}");
    }
    // Writes still go through: the dropped connections hurt nobody.
    client.put(b"after", b"2").await.unwrap();
}
