//! Rendering: every [`Reply`] as text or JSON, the status report and a small
//! aligned-table helper.
//!
//! Text is for people (aligned columns, short digests); JSON is one object per
//! line for scripts, with full digests and stable field names. Values are
//! bytes on the wire; both formats show them as UTF-8, lossily (invalid bytes
//! become U+FFFD), since the CLI takes keys and values as text.

use std::collections::BTreeMap;

use quintet_client::Client;
use quintet_common::rpc::{CatchupState, CoordinatorStatus, ParticipantStatus, Progress};
use serde_json::{Value, json};

use super::commands::Reply;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    /// Human-readable text and tables.
    #[default]
    Text,
    /// One JSON object per result.
    Json,
}

impl Output {
    /// Prints a reply on stdout (and its `error:` line, if any, on stderr).
    pub fn print(&self, reply: &Reply) {
        let out = self.render(reply);
        if !out.is_empty() {
            println!("{out}");
        }
        if let Some(line) = reply.error_line() {
            eprintln!("error: {line}");
        }
    }

    /// The reply as this format, without a trailing newline (empty for a
    /// missing key in text).
    pub fn render(&self, reply: &Reply) -> String {
        match self {
            Output::Text => text(reply),
            Output::Json => json(reply).to_string(),
        }
    }
}

/// Bytes as text, invalid UTF-8 replaced.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn text(reply: &Reply) -> String {
    match reply {
        Reply::Get { found: None, .. } => String::new(),
        Reply::Get {
            found: Some((v, _)),
            ..
        } => lossy(v),
        Reply::Put { version, .. } => format!("OK version {version}"),
        Reply::Delete {
            deleted: true,
            version,
            ..
        } => format!("OK deleted version {version}"),
        Reply::Delete {
            deleted: false,
            version,
            ..
        } => format!("OK (the key did not exist) version {version}"),
        Reply::Status(s) => s.text(),
        Reply::Health { health, .. } => {
            let mut s = format!(
                "role={} id={} ready={}",
                health.role, health.id, health.ready
            );
            if !health.detail.is_empty() {
                s.push_str(&format!(" detail={:?}", health.detail));
            }
            s
        }
        Reply::Text(t) => t.trim_end().to_string(),
    }
}

fn json(reply: &Reply) -> Value {
    match reply {
        Reply::Get { key, found: None } => json!({"key": key, "found": false}),
        Reply::Get {
            key,
            found: Some((v, version)),
        } => json!({"key": key, "found": true, "value": lossy(v), "version": version}),
        Reply::Put { key, version } => json!({"key": key, "version": version}),
        Reply::Delete {
            key,
            deleted,
            version,
        } => json!({"key": key, "deleted": deleted, "version": version}),
        Reply::Status(s) => s.json(),
        Reply::Health { addr, health } => json!({
            "address": addr,
            "role": health.role,
            "id": health.id,
            "ready": health.ready,
            "detail": health.detail,
        }),
        Reply::Text(t) => json!({"text": t}),
    }
}

/// Renders rows under headers with columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count())))
            })
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// The coordinator as seen through one replica.
#[derive(Debug, Clone)]
pub struct CoordinatorView {
    /// The replica the question went through (the coordinator's own address
    /// is not reported by the servers), if any replica answered.
    pub via: Option<String>,
    /// Its status, or why it could not be had.
    pub status: Result<CoordinatorStatus, String>,
}

/// One replica's row.
#[derive(Debug, Clone)]
pub struct ParticipantRow {
    /// 1-based position in --endpoints (stands in for the id when unreachable).
    pub position: usize,
    /// Its address.
    pub address: String,
    /// Its status, or why it could not be had.
    pub status: Result<ParticipantStatus, String>,
}

/// Everything `status` shows.
#[derive(Debug, Clone)]
pub struct StatusReport {
    /// The coordinator line.
    pub coordinator: CoordinatorView,
    /// One row per endpoint, in order.
    pub participants: Vec<ParticipantRow>,
}

impl StatusReport {
    /// Asks every replica (in parallel) and the coordinator (through the first
    /// replica that answers).
    pub async fn gather(client: &Client) -> StatusReport {
        let endpoints = client.endpoints();
        let statuses = client.status_all().await;
        let participants: Vec<ParticipantRow> = endpoints
            .iter()
            .zip(statuses)
            .enumerate()
            .map(|(i, (address, s))| ParticipantRow {
                position: i + 1,
                address: address.clone(),
                status: s.map_err(|e| e.to_string()),
            })
            .collect();
        let mut coordinator = CoordinatorView {
            via: None,
            status: Err("no replica answered, so the coordinator could not be asked".into()),
        };
        for row in participants.iter().filter(|r| r.status.is_ok()) {
            let one = match client.like(std::slice::from_ref(&row.address)) {
                Ok(c) => c,
                Err(e) => {
                    coordinator.status = Err(e);
                    continue;
                }
            };
            let answer = one.coordinator_status().await;
            coordinator = CoordinatorView {
                via: Some(row.address.clone()),
                status: answer.map_err(|e| e.to_string()),
            };
            if coordinator.status.is_ok() {
                break;
            }
        }
        StatusReport {
            coordinator,
            participants,
        }
    }

    /// Whether the coordinator and every replica answered.
    pub fn all_reachable(&self) -> bool {
        self.unreachable().is_empty()
    }

    /// A replica's role in the current view: what the coordinator says when
    /// it answered (member of its view, learner it knows of, else out),
    /// otherwise what the replica itself believes.
    pub fn role(&self, s: &ParticipantStatus) -> &'static str {
        match &self.coordinator.status {
            Ok(c) => {
                if c.view.contains(s.id, s.incarnation) {
                    "member"
                } else if c
                    .learners
                    .iter()
                    .any(|l| l.id == s.id && l.incarnation == s.incarnation)
                {
                    "learner"
                } else {
                    "out"
                }
            }
            Err(_) if s.member => "member",
            Err(_) if s.catchup.is_some() => "learner",
            Err(_) => "out",
        }
    }

    /// A learner's copy progress, from the replica or the coordinator.
    fn progress(&self, s: &ParticipantStatus) -> Option<Progress> {
        if let Some(c) = &s.catchup {
            return Some(c.progress);
        }
        let c = self.coordinator.status.as_ref().ok()?;
        c.learners
            .iter()
            .find(|l| l.id == s.id)
            .and_then(|l| match l.catchup {
                CatchupState::Transferring { progress, .. } => Some(progress),
                _ => None,
            })
    }

    /// Names of what did not answer.
    pub fn unreachable(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.coordinator.status.is_err() {
            out.push("coordinator".to_string());
        }
        for r in &self.participants {
            if r.status.is_err() {
                out.push(format!("replica {} ({})", r.position, r.address));
            }
        }
        out
    }

    /// Reachable replicas grouped by applied version: version -> digests.
    fn by_applied(&self) -> BTreeMap<u64, Vec<&str>> {
        let mut groups: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for r in &self.participants {
            if let Ok(s) = &r.status {
                groups.entry(s.applied).or_default().push(&s.digest);
            }
        }
        groups
    }

    /// True when every pair of reachable replicas at the same applied version
    /// has the same digest (invariant 2).
    pub fn digests_agree(&self) -> bool {
        self.by_applied()
            .values()
            .all(|d| d.iter().all(|x| *x == d[0]))
    }

    /// One line saying whether the digests agree, and at which versions.
    pub fn digest_line(&self) -> String {
        let groups = self.by_applied();
        if groups.is_empty() {
            return "digests: no replica answered".into();
        }
        let spread: Vec<String> = groups
            .iter()
            .rev()
            .map(|(v, d)| format!("{} at version {v}", d.len()))
            .collect();
        if self.digests_agree() {
            format!(
                "digests: equal among replicas at the same applied version ({})",
                spread.join(", ")
            )
        } else {
            let bad: Vec<String> = groups
                .iter()
                .filter(|(_, d)| d.iter().any(|x| x != &d[0]))
                .map(|(v, _)| v.to_string())
                .collect();
            format!(
                "digests: DIFFERENT at applied version {}: replicas with the same history disagree ({})",
                bad.join(", "),
                spread.join(", ")
            )
        }
    }

    /// The text table.
    pub fn text(&self) -> String {
        let c = &self.coordinator;
        let via = c.via.as_deref().unwrap_or("-");
        let coord = match &c.status {
            Ok(s) => {
                let ids: Vec<String> = s.view.ids().map(|i| i.to_string()).collect();
                format!(
                    "coordinator (via {via}): reachable, epoch {}, members [{}] (min {}), committed {}, queued {}, in flight {}",
                    s.epoch,
                    ids.join(","),
                    s.min_participants,
                    s.committed,
                    s.queued,
                    s.in_flight.map_or("-".into(), |b| b.to_string())
                )
            }
            Err(e) => format!("coordinator (via {via}): UNREACHABLE: {e}"),
        };
        let replicas = match &c.status {
            Ok(s) if s.replicas.len() > 1 => {
                let rows: Vec<Vec<String>> = s
                    .replicas
                    .iter()
                    .map(|r| {
                        vec![
                            format!("c{}", r.id),
                            r.address.clone(),
                            if r.reachable { "yes" } else { "NO" }.into(),
                            r.role.clone(),
                            r.term.to_string(),
                            r.applied.to_string(),
                        ]
                    })
                    .collect();
                format!(
                    "{}\n",
                    table(
                        &["REPLICA", "ADDRESS", "REACHABLE", "ROLE", "TERM", "APPLIED"],
                        &rows
                    )
                )
            }
            _ => String::new(),
        };
        let rows: Vec<Vec<String>> = self
            .participants
            .iter()
            .map(|r| match &r.status {
                Ok(s) => vec![
                    s.id.to_string(),
                    r.address.clone(),
                    "yes".into(),
                    self.role(s).into(),
                    format!("{:016x}", s.incarnation).chars().take(8).collect(),
                    s.lease_ms.map_or("-".into(), |ms| format!("{ms}ms")),
                    s.applied.to_string(),
                    s.digest.chars().take(12).collect(),
                    s.pending.len().to_string(),
                    s.keys.to_string(),
                    if s.current { "yes" } else { "NO" }.into(),
                    self.progress(s).map_or("-".into(), |p| progress_text(&p)),
                ],
                Err(e) => {
                    let mut row = vec![format!("({})", r.position), r.address.clone(), "NO".into()];
                    row.extend((0..8).map(|_| "-".to_string()));
                    row.push(format!("-  {e}"));
                    row
                }
            })
            .collect();
        let t = table(
            &[
                "ID",
                "ADDRESS",
                "REACHABLE",
                "ROLE",
                "INCARN",
                "LEASE",
                "APPLIED",
                "DIGEST",
                "PENDING",
                "KEYS",
                "CURRENT",
                "CATCH-UP",
            ],
            &rows,
        );
        format!("{coord}\n{replicas}{t}\n{}", self.digest_line())
    }

    /// The JSON object.
    pub fn json(&self) -> Value {
        let c = &self.coordinator;
        let coordinator = match &c.status {
            Ok(s) => json!({
                "address": c.via,
                "reachable": true,
                "epoch": s.epoch,
                "committed": s.committed,
                "cluster": s.cluster.to_string(),
                "queued": s.queued,
                "in_flight": s.in_flight.map(|b| b.to_string()),
                "view": {
                    "epoch": s.view.epoch,
                    "members": s.view.ids().collect::<Vec<_>>(),
                },
                "min_participants": s.min_participants,
                "members": s.members.iter().map(|m| json!({
                    "id": m.id,
                    "incarnation": format!("{:016x}", m.incarnation),
                    "lease_ms": m.lease_ms,
                    "suspect": m.suspect,
                })).collect::<Vec<_>>(),
                "leader": s.replicas.iter().find(|r| r.role == "leader").map(|r| json!({
                    "id": r.id,
                    "address": r.address,
                    "term": r.term,
                })),
                "learners": s.learners.iter().map(|l| json!({
                    "id": l.id,
                    "incarnation": format!("{:016x}", l.incarnation),
                    "applied": l.applied,
                    "state": match l.catchup {
                        CatchupState::Idle => "idle",
                        CatchupState::Transferring { .. } => "copying",
                        CatchupState::Following => "following",
                        CatchupState::Failed { .. } => "failed",
                    },
                })).collect::<Vec<_>>(),
            }),
            Err(e) => json!({
                "address": c.via,
                "reachable": false,
                "epoch": null,
                "committed": null,
                "error": e,
            }),
        };
        let participants: Vec<Value> = self
            .participants
            .iter()
            .map(|r| match &r.status {
                Ok(s) => json!({
                    "id": s.id,
                    "address": r.address,
                    "reachable": true,
                    "applied": s.applied,
                    "digest": s.digest,
                    "pending": s.pending.len(),
                    "pending_batches": s.pending.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
                    "keys": s.keys,
                    "current": s.current,
                    "role": self.role(s),
                    "incarnation": format!("{:016x}", s.incarnation),
                    "epoch": s.epoch,
                    "lease_ms": s.lease_ms,
                    "catchup": s.catchup.as_ref().map(|c| json!({
                        "source": c.source,
                        "phase": c.phase,
                        "bytes_done": c.progress.bytes_done,
                        "bytes_total": c.progress.bytes_total,
                        "keys_done": c.progress.keys_done,
                        "keys_total": c.progress.keys_total,
                        "batches": c.progress.batches,
                    })),
                }),
                Err(e) => json!({
                    "id": r.position,
                    "address": r.address,
                    "reachable": false,
                    "applied": null,
                    "digest": null,
                    "pending": null,
                    "role": null,
                    "error": e,
                }),
            })
            .collect();
        let coordinators: Vec<Value> = c
            .status
            .as_ref()
            .map(|s| {
                s.replicas
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.id,
                            "address": r.address,
                            "reachable": r.reachable,
                            "role": r.role,
                            "term": r.term,
                            "applied": r.applied,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "coordinator": coordinator,
            "coordinators": coordinators,
            "participants": participants,
            "digests_equal": self.digests_agree(),
        })
    }
}

/// `snapshot 40% (4000/10000 keys)` or `log, 12 batches`.
fn progress_text(p: &Progress) -> String {
    if p.bytes_total > 0 && p.keys_done < p.keys_total {
        let pct = p.bytes_done.saturating_mul(100) / p.bytes_total.max(1);
        format!("snapshot {pct}% ({}/{} keys)", p.keys_done, p.keys_total)
    } else {
        format!("log, {} batches", p.batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_to_the_widest_cell() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz");
    }
}
