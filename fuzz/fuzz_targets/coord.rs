//! Requests on the coordinator's port from participants (register, renew,
//! resolve, submit, status), decoded as the port decodes them and served by
//! the 2PC state machine (`Coordinator`, five participants, cluster
//! `0xfeed` as in the seeds) the way the coordinator's driver serves them,
//! with a tick after each. The machine's own persists are made durable at
//! once, a probe is answered with what the participant last renewed with
//! (so learners join) and a revoke is acknowledged; prepares get no
//! answer, so each round ends by its timeout and a member that does not
//! vote turns suspect. Must never panic (a renewal
//! reports any versions, digests and catch-up state it likes); the epoch
//! and the committed version never go back; a status is always there.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use quintet_common::clock::Time;
use quintet_common::frame::decode_requests;
use quintet_common::protocol::coordinator::{
    Action, Config, Coordinator, Message, Record, Recovered,
};
use quintet_common::rpc::{CatchupState, CoordRequest, CoordinatorRequest, ProbeReply};
use quintet_common::types::ClusterId;
use quintet_common::types::NodeId;
use tarpc::{ClientMessage, Request};

const CLUSTER: ClusterId = ClusterId(0xfeed);
const PARTICIPANTS: u32 = 5;

/// What each participant last said of itself, as a probe answers it.
type Standing = BTreeMap<NodeId, ProbeReply>;

/// Carries out `actions` as a driver whose disk and timers answer at once,
/// whose probes and revokes are answered, and whose other sends are lost;
/// bounded, since each answer may act again.
fn run(c: &mut Coordinator<()>, mut actions: Vec<Action<()>>, now: Time, standing: &Standing) {
    for _ in 0..64 {
        let mut next = Vec::new();
        for a in actions {
            match a {
                Action::Persist(Record::View(v)) => next.extend(c.view_durable(v.epoch, now)),
                Action::Persist(Record::Commit { batch, .. }) => {
                    next.extend(c.commit_durable(batch, now))
                }
                Action::ArmTimer(batch) => next.extend(c.prepare_timeout(batch, now)),
                Action::Send {
                    to,
                    msg: Message::Probe(req),
                } => {
                    if let Some(reply) = standing.get(&to) {
                        c.probed(to, req.epoch, *reply);
                    }
                }
                Action::Send {
                    to,
                    msg: Message::Revoke(req),
                } => next.extend(c.revoked(to, req.epoch, now)),
                _ => {}
            }
        }
        if next.is_empty() {
            return;
        }
        actions = next;
    }
}

fuzz_target!(|data: &[u8]| {
    let (msgs, _) = decode_requests::<CoordinatorRequest>(data);
    let mut now = Time(1_000_000_000);
    let (mut c, actions) = Coordinator::<()>::start(
        Config::new(CLUSTER, PARTICIPANTS),
        Recovered::default(),
        now,
    );
    let mut standing = Standing::new();
    run(&mut c, actions, now, &standing);
    for m in msgs {
        let ClientMessage::Request(Request {
            message: CoordinatorRequest::Coord(req),
            ..
        }) = m
        else {
            continue;
        };
        now = now.plus(Duration::from_millis(50));
        let (epoch, committed) = (c.epoch(), c.committed());
        match req {
            CoordRequest::Register { req } => {
                // The driver refuses ids outside 1..=n before the machine.
                if (1..=PARTICIPANTS).contains(&req.id) {
                    let _ = c.register(req.id, req.advertise);
                }
            }
            CoordRequest::Renew { req } => {
                standing.insert(
                    req.id,
                    ProbeReply {
                        incarnation: req.incarnation,
                        applied: req.applied,
                        digest: req.digest,
                        busy: req.pending.is_some()
                            || !matches!(req.catchup, CatchupState::Following),
                    },
                );
                let (_, actions) = c.renew(&req, now);
                run(&mut c, actions, now, &standing);
            }
            CoordRequest::Submit { op } => {
                let actions = c.submit(op, (), now);
                run(&mut c, actions, now, &standing);
            }
            CoordRequest::Resolve { req } => {
                if req.cluster == CLUSTER {
                    let _ = c.resolve(req.batch, req.first_version);
                }
            }
            CoordRequest::Status {} => {}
        }
        let actions = c.tick(now);
        run(&mut c, actions, now, &standing);
        let _ = c.status(now);
        assert!(c.epoch() >= epoch, "the epoch went back");
        assert!(
            c.committed() >= committed,
            "the committed version went back"
        );
    }
});
