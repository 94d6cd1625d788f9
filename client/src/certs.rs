//! `quintet certs init`: a cluster CA and one certificate per node, so TLS
//! is one command away.
//!
//! The CA (`ca.crt`, `ca.key`) signs a certificate per node, each naming
//! the node as the others check it (docs/security.md): `coordinator.crt`
//! (names `coordinator` and `coordinator-1`), `coordinator-N.crt` for the
//! other replicas (`coordinator`, `coordinator-N`), `participant-N.crt`,
//! and `client.crt` for the CLI. Every node certificate also names the
//! `--hosts` clients dial (default: localhost and the loopback addresses),
//! since a client checks a server by the host it dialed. Keys are ECDSA
//! P-256, written 0600.
//!
//! Run again on the same directory, it keeps the CA and every file that
//! exists and adds what is missing (a new node); `--force` remakes every
//! node's certificate with the same CA (rotation). A new CA means a new
//! directory. Each certificate written is checked right away with the
//! very code the servers load it with.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The CA's subject. Fixed, so an existing CA can sign again from its key
/// alone (no certificate parser needed); CAs differ by their keys.
const CA_NAME: &str = "quintet cluster CA";

/// What to make.
#[derive(Debug, Clone)]
pub struct CertsOptions {
    /// Where the files go (created if missing).
    pub dir: PathBuf,
    /// Extra names and addresses every node certificate carries.
    pub hosts: Vec<String>,
    /// Participants 1..=N get a certificate.
    pub participants: u32,
    /// Coordinator replicas 1..=N get a certificate.
    pub coordinators: u32,
    /// Days the node and client certificates are valid, from now (a
    /// negative number makes expired ones, for tests).
    pub days: i64,
    /// Remake every node certificate even if it exists.
    pub force: bool,
}

impl Default for CertsOptions {
    fn default() -> Self {
        CertsOptions {
            dir: PathBuf::from("certs"),
            hosts: default_hosts(),
            participants: 5,
            coordinators: 3,
            days: 825,
            force: false,
        }
    }
}

/// Names every node certificate carries unless told otherwise.
pub fn default_hosts() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// What [`init`] did.
#[derive(Debug, Default)]
pub struct CertsReport {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Files that existed and were kept.
    pub kept: Vec<PathBuf>,
    /// Whether the CA was made now.
    pub new_ca: bool,
}

/// The node certificates to make: file stem and the names it carries.
fn nodes(opts: &CertsOptions) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for i in 1..=opts.coordinators {
        let stem = if i == 1 {
            "coordinator".to_string()
        } else {
            format!("coordinator-{i}")
        };
        out.push((
            stem,
            vec![
                quintet_common::tls::COORDINATOR.to_string(),
                quintet_common::tls::coordinator_replica_name(i as u64),
            ],
        ));
    }
    for i in 1..=opts.participants {
        let name = quintet_common::tls::participant_name(i);
        out.push((name.clone(), vec![name]));
    }
    out
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(3650);
    Ok(p)
}

fn write_file(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Makes the CA (unless it exists) and the certificates that are missing
/// (or all of them with `force`), and checks each.
pub fn init(opts: &CertsOptions) -> anyhow::Result<CertsReport> {
    if opts.participants == 0 || opts.participants > 7 {
        bail!("--participants must be 1 to 7, got {}", opts.participants);
    }
    if opts.coordinators == 0 || opts.coordinators > 7 {
        bail!("--coordinators must be 1 to 7, got {}", opts.coordinators);
    }
    fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let mut report = CertsReport::default();
    let ca_crt = opts.dir.join("ca.crt");
    let ca_key = opts.dir.join("ca.key");
    let ca_key_pair = match (ca_crt.exists(), ca_key.exists()) {
        (true, true) => {
            let pem = fs::read_to_string(&ca_key)
                .with_context(|| format!("cannot read {}", ca_key.display()))?;
            report.kept.extend([ca_crt.clone(), ca_key.clone()]);
            KeyPair::from_pem(&pem)
                .with_context(|| format!("{} is not a private key", ca_key.display()))?
        }
        (false, false) => {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_file(&ca_key, &key.serialize_pem(), true)?;
            write_file(&ca_crt, &cert.pem(), false)?;
            report.written.extend([ca_crt.clone(), ca_key.clone()]);
            report.new_ca = true;
            key
        }
        _ => bail!(
            "{} holds only one of ca.crt and ca.key: restore the other, or use a new directory for a new CA",
            opts.dir.display()
        ),
    };
    let issuer = Issuer::new(ca_params()?, ca_key_pair);
    let now = OffsetDateTime::now_utc();
    let make = |names: Vec<String>, server: bool| -> anyhow::Result<(String, String)> {
        let cn = names.first().cloned().unwrap_or_default();
        let mut p = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        p.use_authority_key_identifier_extension = true;
        p.not_before = now - Duration::hours(1) + Duration::days(opts.days.min(0) - 1);
        p.not_after = now + Duration::days(opts.days);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let mut todo: Vec<(String, Vec<String>, bool)> = nodes(opts)
        .into_iter()
        .map(|(stem, mut names)| {
            names.extend(opts.hosts.iter().cloned());
            (stem, names, true)
        })
        .collect();
    todo.push(("client".into(), vec!["client".into()], false));
    for (stem, names, server) in todo {
        let crt = opts.dir.join(format!("{stem}.crt"));
        let key = opts.dir.join(format!("{stem}.key"));
        if !report.new_ca && !opts.force && crt.exists() && key.exists() {
            report.kept.extend([crt, key]);
            continue;
        }
        let (cert_pem, key_pem) = make(names, server)?;
        write_file(&key, &key_pem, true)?;
        write_file(&crt, &cert_pem, false)?;
        // Load it as the servers and the CLI will: a CA that is not ours
        // (or a ca.key that is not ca.crt's) shows here, not at start-up.
        if opts.days > 0 {
            let check = if server {
                quintet_common::tls::NodeTls::load(&crt, &key, &ca_crt).map(|_| ())
            } else {
                quintet_common::tls::client_config(Some(&ca_crt), Some(&crt), Some(&key))
                    .map(|_| ())
            };
            check.map_err(|e| {
                anyhow::anyhow!(
                    "{e}; {} was not made by quintet certs init, or ca.key does not belong to it: use a new directory",
                    ca_crt.display()
                )
            })?;
        }
        report.written.extend([crt, key]);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_ca_and_node_certificates_that_load_and_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CertsOptions {
            dir: dir.path().to_path_buf(),
            coordinators: 1,
            participants: 2,
            ..CertsOptions::default()
        };
        let first = init(&opts).unwrap();
        assert!(first.new_ca);
        for f in [
            "ca.crt",
            "ca.key",
            "coordinator.crt",
            "participant-2.key",
            "client.crt",
        ] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        let mode = fs::metadata(dir.path().join("participant-1.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let ca = fs::read(dir.path().join("ca.crt")).unwrap();
        // Again with one more participant: the CA and the others are kept.
        let again = init(&CertsOptions {
            participants: 3,
            ..opts.clone()
        })
        .unwrap();
        assert!(!again.new_ca);
        assert_eq!(fs::read(dir.path().join("ca.crt")).unwrap(), ca);
        assert_eq!(
            again.written,
            vec![
                dir.path().join("participant-3.crt"),
                dir.path().join("participant-3.key")
            ]
        );
        let p3 = quintet_common::tls::NodeTls::load(
            &dir.path().join("participant-3.crt"),
            &dir.path().join("participant-3.key"),
            &dir.path().join("ca.crt"),
        )
        .unwrap();
        p3.require_own_name("participant-3").unwrap();
        assert!(p3.require_own_name("participant-1").is_err());
    }
}
