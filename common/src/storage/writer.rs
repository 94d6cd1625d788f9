//! The async, group-committing front end of a [`Wal`].
//!
//! Why a dedicated thread:
//!
//! - **Cancel safety.** tarpc drops a handler's future when the client goes
//!   away. If the handler itself wrote to the log, a drop between "write" and
//!   "fsync" or in the middle of a record would leave the log in a state no
//!   one tracks. Here the handler only *enqueues* (synchronously, under the
//!   caller's own lock, so log order = the order the caller decided) and then
//!   awaits a notification; dropping that wait changes nothing on disk.
//! - **No blocking in the runtime.** `write` and `fsync` block for
//!   milliseconds; on the thread they never stall tokio workers.
//! - **Group commit.** The thread takes everything queued, writes it, and
//!   issues ONE fsync for the whole group before publishing the new durable
//!   [`Lsn`] through a `tokio::sync::watch`. Under load, one fsync covers many
//!   requests, which is what makes 2PC's "force before replying" affordable.
//! - **Fatal, sticky errors.** After a failed write or fsync the state of
//!   the file is unknown (Linux may drop the dirty pages and report success on
//!   a second fsync), so the thread never retries: it publishes the error,
//!   stops, and every waiter for a record that was not yet durable gets it.
//!   The process must restart and recover from what is really on disk.
//!
//! LSNs number the operations handed to the writer in order, starting at 1:
//! each appended record takes one, and each rotation takes one for itself
//! plus one per carried record, so waiting for the LSN returned by
//! [`LogWriter::rotate`] waits until the new segment exists and its carried
//! records are durable. LSNs restart at 1 in every process; they are not
//! stored on disk.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use tokio::sync::watch;

use super::error::StorageError;
use super::wal::{RECORD_HEADER_LEN, Wal};

/// Position of an operation in the writer's queue (1, 2, 3, …; 0 = nothing).
pub type Lsn = u64;

/// Most operations written per fsync, so a flood of appends still gets
/// durability published regularly.
const MAX_GROUP_OPS: usize = 4096;
/// Most payload bytes written per fsync, for the same reason.
const MAX_GROUP_BYTES: usize = 8 << 20;

/// Work for the writer thread, in log order.
enum Op {
    Append(Vec<u8>),
    Rotate(Vec<Vec<u8>>),
    Shutdown,
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Append(p) => p.len(),
            Op::Rotate(carry) => carry.iter().map(Vec::len).sum(),
            Op::Shutdown => 0,
        }
    }
}

/// What the writer thread publishes after each group.
#[derive(Debug, Clone)]
struct Durable {
    /// Every operation up to here is on disk.
    lsn: Lsn,
    /// Set once, when the writer failed; it stops after publishing it.
    error: Option<StorageError>,
}

/// Handle to the writer thread that owns a [`Wal`]; see the module docs.
///
/// It is `Send + Sync` and meant to live inside the caller's
/// `std::sync::Mutex`: enqueue under the lock, await durability outside it.
#[derive(Debug)]
pub struct LogWriter {
    tx: mpsc::Sender<Op>,
    durable: watch::Receiver<Durable>,
    last_lsn: Lsn,
    segment: u64,
    bytes_since_rotate: u64,
    syncs: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// The thread side: owns the log.
struct Worker {
    wal: Wal,
    rx: mpsc::Receiver<Op>,
    durable: watch::Sender<Durable>,
    syncs: Arc<AtomicU64>,
    lsn: Lsn,
}

impl LogWriter {
    /// Starts the writer thread, which takes ownership of `wal`.
    ///
    /// If the OS refuses to start a thread, the handle is returned in the
    /// failed state: every [`LogWriter::wait_durable`] reports the error.
    pub fn spawn(wal: Wal) -> LogWriter {
        let (mut handle, worker) = Self::build(wal);
        handle.start(worker);
        handle
    }

    fn build(wal: Wal) -> (LogWriter, Worker) {
        let (tx, rx) = mpsc::channel();
        let (durable_tx, durable_rx) = watch::channel(Durable {
            lsn: 0,
            error: None,
        });
        let syncs = Arc::new(AtomicU64::new(0));
        let handle = LogWriter {
            tx,
            durable: durable_rx,
            last_lsn: 0,
            segment: wal.current_segment(),
            bytes_since_rotate: wal.bytes_since_rotate(),
            syncs: Arc::clone(&syncs),
            thread: None,
        };
        let worker = Worker {
            wal,
            rx,
            durable: durable_tx,
            syncs,
            lsn: 0,
        };
        (handle, worker)
    }

    fn start(&mut self, worker: Worker) {
        let dir = worker.wal.dir().to_path_buf();
        match thread::Builder::new()
            .name("quintet-wal".to_string())
            .spawn(move || worker.run())
        {
            Ok(thread) => self.thread = Some(thread),
            Err(e) => {
                let error = StorageError::io(dir, e);
                tracing::error!(%error, "could not start the log writer thread");
                // The worker (and its watch sender) died with the closure;
                // put the error where waiters will see it.
                let (_tx, rx) = watch::channel(Durable {
                    lsn: 0,
                    error: Some(error),
                });
                self.durable = rx;
            }
        }
    }

    /// Enqueues one record and returns its LSN; never blocks.
    ///
    /// The payload must be 1..=`max_record` bytes; anything else is a caller
    /// bug and stops the writer (fatal, like an I/O error), because skipping
    /// it would make later LSNs durable around a hole.
    pub fn append(&mut self, payload: Vec<u8>) -> Lsn {
        self.last_lsn += 1;
        self.bytes_since_rotate += (RECORD_HEADER_LEN + payload.len()) as u64;
        // A send error means the thread has stopped; its error (or
        // WriterStopped) reaches whoever waits for this LSN.
        let _ = self.tx.send(Op::Append(payload));
        self.last_lsn
    }

    /// Enqueues a rotation: the thread syncs the current segment, starts the
    /// next one and writes `carry` as its first records. Returns the new
    /// segment's index and the LSN to wait for (rotation plus carry durable).
    pub fn rotate(&mut self, carry: Vec<Vec<u8>>) -> (u64, Lsn) {
        self.segment += 1;
        self.last_lsn += 1 + carry.len() as u64;
        self.bytes_since_rotate = carry
            .iter()
            .map(|c| (RECORD_HEADER_LEN + c.len()) as u64)
            .sum();
        let _ = self.tx.send(Op::Rotate(carry));
        (self.segment, self.last_lsn)
    }

    /// Resolves once every operation up to `lsn` is fsynced, or with the
    /// writer's fatal error if that happens first.
    ///
    /// The returned future does not borrow the handle, so it can be created
    /// under a lock and awaited after releasing it; dropping it is harmless.
    pub fn wait_durable(
        &self,
        lsn: Lsn,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
        let mut rx = self.durable.clone();
        async move {
            let state = rx
                .wait_for(|d| d.lsn >= lsn || d.error.is_some())
                .await
                .map(|d| d.clone());
            match state {
                Ok(d) if d.lsn >= lsn => Ok(()),
                Ok(Durable { error: Some(e), .. }) => Err(e),
                Ok(_) | Err(_) => Err(StorageError::WriterStopped),
            }
        }
    }

    /// Bytes of records enqueued for the current segment (headers included);
    /// approximate because it counts what is queued, not what is written.
    pub fn bytes_since_rotate(&self) -> u64 {
        self.bytes_since_rotate
    }

    /// Segment index that queued appends go to (after queued rotations).
    pub fn current_segment(&self) -> u64 {
        self.segment
    }

    /// LSN of the last operation enqueued (0 if none).
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// Highest LSN known to be durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable.borrow().lsn
    }

    /// Number of fsyncs the writer has done so far (for tests and metrics).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Writes and syncs everything queued, stops the thread and waits for it
    /// (blocking; releases the data-dir lock). Returns the writer's fatal
    /// error if it had one.
    ///
    /// Dropping the handle instead lets the thread finish the queue in the
    /// background and exit.
    pub fn shutdown(mut self) -> Result<(), StorageError> {
        let _ = self.tx.send(Op::Shutdown);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(StorageError::WriterStopped);
        }
        let state = self.durable.borrow().clone();
        match state.error {
            Some(e) => Err(e),
            None if state.lsn >= self.last_lsn => Ok(()),
            None => Err(StorageError::WriterStopped),
        }
    }
}

impl Worker {
    fn run(mut self) {
        // recv fails only when the handle is gone and the queue is drained.
        while let Ok(first) = self.rx.recv() {
            let mut bytes = first.bytes();
            let mut group = vec![first];
            while group.len() < MAX_GROUP_OPS && bytes < MAX_GROUP_BYTES {
                match self.rx.try_recv() {
                    Ok(op) => {
                        bytes += op.bytes();
                        group.push(op);
                    }
                    Err(_) => break,
                }
            }
            let result = self.write_group(group);
            self.syncs.store(self.wal.syncs(), Ordering::Relaxed);
            match result {
                Ok(shutdown) => {
                    let lsn = self.lsn;
                    self.durable.send_modify(|d| d.lsn = lsn);
                    if shutdown {
                        break;
                    }
                }
                Err(error) => {
                    tracing::error!(
                        %error,
                        durable_lsn = self.durable.borrow().lsn,
                        "the log writer failed; nothing more will be made durable"
                    );
                    self.durable.send_modify(|d| d.error = Some(error));
                    break;
                }
            }
        }
    }

    /// Writes one group and syncs it once; returns whether shutdown was asked.
    fn write_group(&mut self, group: Vec<Op>) -> Result<bool, StorageError> {
        let mut shutdown = false;
        let mut dirty = false;
        for op in group {
            match op {
                Op::Append(payload) => {
                    self.wal.append(&payload)?;
                    self.lsn += 1;
                    dirty = true;
                }
                Op::Rotate(carry) => {
                    // rotate() syncs the old segment and the new file.
                    self.wal.rotate()?;
                    self.lsn += 1;
                    dirty = false;
                    for payload in carry {
                        self.wal.append(&payload)?;
                        self.lsn += 1;
                        dirty = true;
                    }
                }
                Op::Shutdown => shutdown = true,
            }
        }
        if dirty {
            self.wal.sync()?;
        }
        Ok(shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handle_is_send_and_sync() {
        assert_send_sync::<LogWriter>();
        assert_send_sync::<std::sync::Mutex<LogWriter>>();
    }

    /// Everything queued before the thread starts is one group: one fsync.
    #[tokio::test]
    async fn queued_appends_share_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 1024).unwrap();
        let (mut w, worker) = LogWriter::build(wal);
        let lsns: Vec<Lsn> = (0..100u32)
            .map(|i| w.append(i.to_le_bytes().to_vec()))
            .collect();
        assert_eq!(lsns, (1..=100).collect::<Vec<_>>());
        w.start(worker);
        w.wait_durable(100).await.unwrap();
        assert_eq!(w.syncs(), 1);
        assert_eq!(w.durable_lsn(), 100);
        w.shutdown().unwrap();

        let (_, records) = Wal::open(dir.path(), 1024).unwrap();
        assert_eq!(records.len(), 100);
        assert_eq!(records[99], 99u32.to_le_bytes());
    }

    /// A group holding a rotation syncs the old segment in rotate() and the
    /// carry once at the end.
    #[tokio::test]
    async fn rotation_in_a_group_is_ordered_with_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 1024).unwrap();
        let (mut w, worker) = LogWriter::build(wal);
        w.append(b"a".to_vec());
        let (seg, lsn) = w.rotate(vec![b"carry1".to_vec(), b"carry2".to_vec()]);
        assert_eq!((seg, lsn), (2, 4));
        assert_eq!(w.bytes_since_rotate(), 2 * 8 + 12);
        let last = w.append(b"b".to_vec());
        assert_eq!(last, 5);
        w.start(worker);
        w.wait_durable(last).await.unwrap();
        assert_eq!(w.syncs(), 2);
        w.shutdown().unwrap();

        let (_, records) = Wal::open_from(dir.path(), 1024, 2).unwrap();
        assert_eq!(
            records,
            vec![b"carry1".to_vec(), b"carry2".to_vec(), b"b".to_vec()]
        );
    }
}
