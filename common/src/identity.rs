//! The `IDENTITY` file of a data dir: which cluster it belongs to, which
//! node it is, and (for a participant) the data dir's random incarnation.
//! Written once, atomically (temp file, fsync, rename, fsync dir), and
//! checked at every start so a data dir is never served under the wrong
//! cluster or participant id. A wiped data dir gets a new incarnation, which
//! is how the coordinator tells a rebuilt replica from the member it was.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::types::{ClusterId, NodeId};

/// File name inside the data dir.
pub const FILE: &str = "IDENTITY";

/// Who a data dir belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster.
    pub cluster: ClusterId,
    /// 0 for the coordinator, else the participant id.
    pub node: NodeId,
    /// The data dir's incarnation (0 for the coordinator).
    pub incarnation: u64,
}

/// Reads the identity, `None` if the data dir has none yet.
pub fn load(dir: &Path) -> anyhow::Result<Option<Identity>> {
    let path = dir.join(FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let damaged = || {
        anyhow::anyhow!(
            "{} is damaged; restore the data dir or wipe it",
            path.display()
        )
    };
    let mut cluster = None;
    let mut node = None;
    let mut incarnation = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("cluster", v)) => cluster = Some(v.parse().map_err(|_| damaged())?),
            Some(("node", v)) => node = Some(v.parse().map_err(|_| damaged())?),
            Some(("incarnation", v)) => {
                incarnation = Some(u64::from_str_radix(v, 16).map_err(|_| damaged())?)
            }
            _ => {}
        }
    }
    match (cluster, node, incarnation) {
        (Some(cluster), Some(0), inc) => Ok(Some(Identity {
            cluster,
            node: 0,
            incarnation: inc.unwrap_or(0),
        })),
        (Some(cluster), Some(node), Some(incarnation)) => Ok(Some(Identity {
            cluster,
            node,
            incarnation,
        })),
        _ => Err(damaged()),
    }
}

/// Writes the identity atomically.
pub fn store(dir: &Path, id: Identity) -> anyhow::Result<()> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "# quintet data dir identity; do not edit")?;
        writeln!(f, "cluster={}", id.cluster)?;
        writeln!(f, "node={}", id.node)?;
        writeln!(f, "incarnation={:016x}", id.incarnation)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let id = Identity {
            cluster: ClusterId(0xabc),
            node: 3,
            incarnation: 0xfeed,
        };
        store(dir.path(), id).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(id));
        fs::write(dir.path().join(FILE), "cluster=zz\nnode=1\n").unwrap();
        assert!(load(dir.path()).is_err());
        fs::write(dir.path().join(FILE), "cluster=abc\nnode=1\n").unwrap();
        assert!(
            load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("damaged")
        );
    }
}
