//! Operation histories recorded by workloads.
//!
//! A history is the client-side record of everything a workload did: for
//! every operation, who invoked it (client, replica), on which key, what it
//! was (put/get/delete), when it was invoked and when its outcome became
//! known, and what it returned. It is the only input of the linearizability
//! checker ([`crate::checker`]), so it records what a client can observe and
//! nothing else: no server-side state, no clock of any node but the runner's.
//!
//! Outcomes come in three kinds, because a distributed client cannot always
//! tell what happened:
//!
//! - [`Outcome::Ok`]: the operation took effect, somewhere between its
//!   invocation and its completion, and returned the recorded result;
//! - [`Outcome::Failed`]: the operation surely did not take effect (a clear
//!   error such as an abort, or a refusal before anything was sent);
//! - [`Outcome::Unknown`]: the request may or may not have taken effect (a
//!   timeout or a lost connection after the request was sent). Such a write
//!   may take effect at any time after its invocation, even long after the
//!   client gave up, so `complete_us` is only the time the client stopped
//!   waiting, not an upper bound.
//!
//! Times are microseconds since the start of the run, from one monotonic
//! clock in the runner. Values written by puts must be unique within a run
//! (the workload guarantees it): the checker relies on this to tell which put
//! a read observed.
//!
//! The on-disk form is JSON lines, one [`Event`] per line, so a history can be
//! streamed while the run is going (a crash of the runner still leaves every
//! completed line readable), inspected with `jq`, and read back with
//! [`History::read_jsonl`], which reports the line number of any bad line.
//! Absent optional fields are omitted. For example:
//!
//! ```text
//! {"id":1,"client":0,"replica":2,"key":"k","op":{"type":"put","value":"a"},"invoke_us":10,"complete_us":20,"outcome":"ok","version":7}
//! {"id":2,"client":1,"key":"k","op":{"type":"get"},"invoke_us":30,"complete_us":40,"outcome":"ok","found":true,"value":"a","version":7}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Client id used for the synthetic final-state reads the checker appends.
pub const FINAL_READ_CLIENT: u32 = u32::MAX;

/// What was invoked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Write `value` to the key.
    Put {
        /// The value written; unique within a run.
        value: String,
    },
    /// Read the key.
    Get,
    /// Remove the key.
    Delete,
}

/// How an operation ended, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Took effect between invocation and completion; results are recorded.
    Ok,
    /// Surely did not take effect.
    Failed,
    /// May or may not have taken effect, at any time after invocation.
    Unknown,
}

/// One operation of a workload: invocation, outcome and results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id of the operation within the history.
    pub id: u64,
    /// The client (workload task) that invoked it.
    pub client: u32,
    /// The replica the request was sent to, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    /// The key operated on.
    pub key: String,
    /// What was invoked.
    pub op: Op,
    /// Invocation time, microseconds since the run started.
    pub invoke_us: u64,
    /// When the outcome became known (for `Unknown`: when the client gave up).
    pub complete_us: u64,
    /// How the operation ended.
    pub outcome: Outcome,
    /// Get result: whether the key was present (Ok gets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
    /// Get result: the value read, when found (Ok gets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Delete result: whether the key existed (Ok deletes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// Version of the write (put/delete), or of the value read (get); Ok only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl Event {
    /// Whether the operation is a put or a delete.
    pub fn is_write(&self) -> bool {
        !matches!(self.op, Op::Get)
    }

    /// The latest time mentioned by this event.
    pub fn end_us(&self) -> u64 {
        self.invoke_us.max(self.complete_us)
    }
}

/// Shortens a value for display so that 100-byte values keep messages readable.
pub(crate) fn short(value: &str) -> String {
    const MAX: usize = 24;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}...")
    }
}

impl fmt::Display for Event {
    /// One line, e.g. `#12 put "abc" (client 3 via replica 2, 1200-1350us) -> ok v5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} ", self.id)?;
        match &self.op {
            Op::Put { value } => write!(f, "put {}", short(value))?,
            Op::Get => write!(f, "get")?,
            Op::Delete => write!(f, "delete")?,
        }
        if self.client == FINAL_READ_CLIENT {
            write!(f, " (final read")?;
        } else {
            write!(f, " (client {}", self.client)?;
        }
        if let Some(r) = self.replica {
            write!(f, " via replica {r}")?;
        }
        write!(f, ", {}-{}us) -> ", self.invoke_us, self.complete_us)?;
        match self.outcome {
            Outcome::Failed => return write!(f, "failed"),
            Outcome::Unknown => return write!(f, "unknown (client gave up)"),
            Outcome::Ok => {}
        }
        match &self.op {
            Op::Put { .. } => write!(f, "ok")?,
            Op::Get => match (self.found, &self.value) {
                (Some(true), Some(v)) => write!(f, "{}", short(v))?,
                (Some(false), _) => write!(f, "not found")?,
                _ => write!(f, "ok (no result recorded)")?,
            },
            Op::Delete => match self.deleted {
                Some(true) => write!(f, "deleted")?,
                Some(false) => write!(f, "was absent")?,
                None => write!(f, "ok")?,
            },
        }
        if let Some(v) = self.version {
            write!(f, " v{v}")?;
        }
        Ok(())
    }
}

/// The recorded history of a workload: events in the order they were pushed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The events, in recording order (not necessarily sorted by time).
    pub events: Vec<Event>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one event.
    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Iterates over the events in recording order.
    pub fn iter(&self) -> std::slice::Iter<'_, Event> {
        self.events.iter()
    }

    /// The latest time mentioned by any event (0 for an empty history).
    pub fn end_us(&self) -> u64 {
        self.events.iter().map(Event::end_us).max().unwrap_or(0)
    }

    /// Events grouped by key (keys in sorted order, events in recording order).
    pub fn by_key(&self) -> BTreeMap<&str, Vec<&Event>> {
        let mut map: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        for e in &self.events {
            map.entry(e.key.as_str()).or_default().push(e);
        }
        map
    }

    /// Writes the history as JSON lines to `out`.
    pub fn write_to<W: Write>(&self, out: W) -> Result<()> {
        let mut out = BufWriter::new(out);
        for e in &self.events {
            serde_json::to_writer(&mut out, e)
                .with_context(|| format!("serializing event #{}", e.id))?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }

    /// Writes the history as JSON lines to the file at `path` (replacing it).
    pub fn write_jsonl(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        self.write_to(file)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads JSON lines from `input`; blank lines are skipped, `source` names it in errors.
    pub fn read_from<R: BufRead>(input: R, source: &str) -> Result<Self> {
        let mut history = Self::new();
        for (i, line) in input.lines().enumerate() {
            let lineno = i + 1;
            let line = line.with_context(|| format!("{source} line {lineno}: read error"))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(&line) {
                Ok(e) => history.push(e),
                Err(err) => bail!("{source} line {lineno}: not a history event: {err}"),
            }
        }
        Ok(history)
    }

    /// Reads a history written by [`History::write_jsonl`]; errors name the line.
    pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Self::read_from(BufReader::new(file), &path.display().to_string())
    }
}

impl FromIterator<Event> for History {
    fn from_iter<I: IntoIterator<Item = Event>>(iter: I) -> Self {
        Self {
            events: iter.into_iter().collect(),
        }
    }
}

impl Extend<Event> for History {
    fn extend<I: IntoIterator<Item = Event>>(&mut self, iter: I) {
        self.events.extend(iter);
    }
}

impl<'a> IntoIterator for &'a History {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> History {
        let mut h = History::new();
        h.push(Event {
            id: 1,
            client: 0,
            replica: Some(2),
            key: "k".into(),
            op: Op::Put { value: "a".into() },
            invoke_us: 10,
            complete_us: 20,
            outcome: Outcome::Ok,
            found: None,
            value: None,
            deleted: None,
            version: Some(7),
        });
        h.push(Event {
            id: 2,
            client: 1,
            replica: None,
            key: "k".into(),
            op: Op::Get,
            invoke_us: 30,
            complete_us: 40,
            outcome: Outcome::Ok,
            found: Some(true),
            value: Some("a".into()),
            deleted: None,
            version: Some(7),
        });
        h.push(Event {
            id: 3,
            client: 1,
            replica: Some(4),
            key: "j".into(),
            op: Op::Delete,
            invoke_us: 50,
            complete_us: 90,
            outcome: Outcome::Unknown,
            found: None,
            value: None,
            deleted: None,
            version: None,
        });
        h
    }

    #[test]
    fn jsonl_round_trip() {
        let h = sample();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        h.write_jsonl(&path).expect("write");
        let text = std::fs::read_to_string(&path).expect("read text");
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.contains(r#""op":{"type":"put","value":"a"}"#),
            "{text}"
        );
        assert!(text.contains(r#""outcome":"unknown""#), "{text}");
        // The example in the module docs is what is written.
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"id":1,"client":0,"replica":2,"key":"k","op":{"type":"put","value":"a"},"invoke_us":10,"complete_us":20,"outcome":"ok","version":7}"#
        );
        assert_eq!(
            lines[1],
            r#"{"id":2,"client":1,"key":"k","op":{"type":"get"},"invoke_us":30,"complete_us":40,"outcome":"ok","found":true,"value":"a","version":7}"#
        );
        let back = History::read_jsonl(&path).expect("read back");
        assert_eq!(back, h);
    }

    #[test]
    fn bad_line_is_reported_with_its_number() {
        let mut buf = Vec::new();
        sample().write_to(&mut buf).expect("write");
        let mut text = String::from_utf8(buf).expect("utf8");
        text.push('\n'); // blank line 4 is skipped
        text.push_str("{\"id\": 9, \"oops\": true}\n");
        let err = History::read_from(text.as_bytes(), "h.jsonl").expect_err("must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("h.jsonl line 5"), "{msg}");
    }

    #[test]
    fn by_key_groups_in_key_order() {
        let h = sample();
        let groups = h.by_key();
        let keys: Vec<&str> = groups.keys().copied().collect();
        assert_eq!(keys, ["j", "k"]);
        assert_eq!(groups["k"].len(), 2);
        assert_eq!(h.end_us(), 90);
    }

    #[test]
    fn display_is_one_readable_line() {
        let h = sample();
        assert_eq!(
            h.events[0].to_string(),
            "#1 put \"a\" (client 0 via replica 2, 10-20us) -> ok v7"
        );
        assert_eq!(
            h.events[1].to_string(),
            "#2 get (client 1, 30-40us) -> \"a\" v7"
        );
        assert_eq!(
            h.events[2].to_string(),
            "#3 delete (client 1 via replica 4, 50-90us) -> unknown (client gave up)"
        );
    }
}
