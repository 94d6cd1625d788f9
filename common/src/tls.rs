//! TLS for every port: loading certificates, the rustls configurations a
//! server and a client use, who a caller's certificate says it is, and
//! what a failed handshake means in words an operator can act on.
//!
//! rustls with the ring provider, TLS 1.3 only (every end is a quintet
//! binary, so there is no older peer to talk to). One cluster CA signs
//! every certificate; a node's certificate names the node:
//! `participant-N` for participant N, `coordinator` and `coordinator-N`
//! for coordinator replica N (every replica shares the name `coordinator`,
//! which is what a participant checks, since any replica may lead), plus
//! the host names and addresses clients dial (`quintet certs init --hosts`).
//!
//! Peer traffic is mutual TLS: the coordinator's port and a participant's
//! peer port accept only a client certificate signed by the CA, and each
//! call then checks that the certificate names the node the call claims to
//! come from (a `prepare` only from a coordinator, a `register` as
//! participant 3 only from `participant-3`); see [`Caller`]. A dialing
//! server checks that the server it reached is the node it meant to reach,
//! by that name, not by its address. A participant's client port asks for
//! a client certificate but does not require one; one that is presented
//! must be signed by the CA.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, InconsistentKeys, RootCertStore, ServerConfig,
};

use crate::error::Error;
use crate::types::{MAX_PARTICIPANTS, NodeId};

/// The name every coordinator replica's certificate carries.
pub const COORDINATOR: &str = "coordinator";

/// The name participant `id`'s certificate carries.
pub fn participant_name(id: NodeId) -> String {
    format!("participant-{id}")
}

/// The name coordinator replica `id`'s certificate carries (besides
/// [`COORDINATOR`]).
pub fn coordinator_replica_name(id: u64) -> String {
    format!("coordinator-{id}")
}

/// The crypto provider every config uses.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{flag} {}: not a PEM certificate file ({e})",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: holds no certificate (no '-----BEGIN CERTIFICATE-----' block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn read_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "{flag} {}: no private key in it ({e}); give the .key file made with the certificate",
            path.display()
        )
    })
}

/// The CA certificates of a PEM file, as trust anchors.
pub fn read_roots(path: &Path, flag: &str) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, flag)? {
        roots.add(cert).map_err(|e| {
            format!(
                "{flag} {}: not a usable CA certificate ({e})",
                path.display()
            )
        })?;
    }
    Ok(Arc::new(roots))
}

/// Checks that `key` belongs to the first certificate of `chain`.
fn check_key(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
    flags: (&str, &str),
) -> Result<(), String> {
    match rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(format!(
            "{} {} does not belong to {} {}: give the key made with that certificate",
            flags.1,
            key_path.display(),
            flags.0,
            cert_path.display()
        )),
        Err(e) => Err(format!(
            "{} {}: the key cannot be used ({e})",
            flags.1,
            key_path.display()
        )),
    }
}

/// Whether a parsed certificate names `name` (a DNS name or an address).
fn cert_names(cert: &ParsedCertificate<'_>, name: &str) -> bool {
    match ServerName::try_from(name) {
        Ok(n) => rustls::client::verify_server_name(cert, &n).is_ok(),
        Err(_) => false,
    }
}

/// A server's TLS settings, from `--tls-cert`, `--tls-key` and `--tls-ca`:
/// the certificate it serves with (and presents when it dials another
/// server), and the cluster CA it trusts.
pub struct NodeTls {
    cert_path: PathBuf,
    leaf: CertificateDer<'static>,
    client: Arc<ClientConfig>,
    peer_server: Arc<ServerConfig>,
    client_server: Arc<ServerConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("cert", &self.cert_path)
            .finish()
    }
}

impl NodeTls {
    /// The settings from the three flags: none of them means plain TCP;
    /// some but not all is an error.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<Arc<NodeTls>>, String> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => NodeTls::load(cert, key, ca).map(|t| Some(Arc::new(t))),
            _ => Err(
                "--tls-cert, --tls-key and --tls-ca go together: give all three (quintet certs init makes them), or none for plain TCP".into(),
            ),
        }
    }

    /// Loads and checks the files: the key belongs to the certificate, and
    /// the certificate is signed by the CA and valid now.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<NodeTls, String> {
        let chain = read_certs(cert, "--tls-cert")?;
        let private = read_key(key, "--tls-key")?;
        let roots = read_roots(ca, "--tls-ca")?;
        check_key(&chain, &private, cert, key, ("--tls-cert", "--tls-key"))?;
        let leaf = chain[0].clone();
        let parsed = ParsedCertificate::try_from(&leaf)
            .map_err(|e| format!("--tls-cert {}: cannot be parsed ({e})", cert.display()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => format!(
                "--tls-cert {} has expired: make a new one (quintet certs init --force) and restart",
                cert.display()
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => format!(
                "--tls-cert {} is not valid yet: check this machine's clock",
                cert.display()
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => format!(
                "--tls-cert {} is not signed by --tls-ca {}: give the CA that made it (DIR/ca.crt of quintet certs init)",
                cert.display(),
                ca.display()
            ),
            other => format!(
                "--tls-cert {} does not check out against --tls-ca {}: {other}",
                cert.display(),
                ca.display()
            ),
        })?;
        let versions = &[&rustls::version::TLS13];
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), private.clone_key())
            .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
        let server = |mandatory: bool| -> Result<Arc<ServerConfig>, String> {
            let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let verifier = if mandatory {
                builder.build()
            } else {
                builder.allow_unauthenticated().build()
            }
            .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            let config = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .map_err(|e| e.to_string())?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), private.clone_key())
                .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
            Ok(Arc::new(config))
        };
        Ok(NodeTls {
            cert_path: cert.to_path_buf(),
            leaf,
            client: Arc::new(client),
            peer_server: server(true)?,
            client_server: server(false)?,
        })
    }

    /// Fails unless this server's own certificate names `name` (a node
    /// must present the name the others check).
    pub fn require_own_name(&self, name: &str) -> Result<(), String> {
        let parsed = ParsedCertificate::try_from(&self.leaf).map_err(|e| e.to_string())?;
        if cert_names(&parsed, name) {
            Ok(())
        } else {
            Err(format!(
                "--tls-cert {} does not name {name}: give this node's own certificate (DIR/{name}.crt of quintet certs init)",
                self.cert_path.display()
            ))
        }
    }

    /// How to dial the server named `name` (checked against its
    /// certificate), presenting this node's certificate.
    pub fn dial(&self, name: &str) -> Result<crate::net::Dial, String> {
        crate::net::Dial::tls(self.client.clone(), name)
    }

    /// The server config of a peer port (and of the coordinator's port):
    /// a client certificate signed by the CA is required.
    pub fn peer_server(&self) -> Arc<ServerConfig> {
        self.peer_server.clone()
    }

    /// The server config of a participant's client port: a client
    /// certificate is optional, and checked against the CA if presented.
    pub fn client_server(&self) -> Arc<ServerConfig> {
        self.client_server.clone()
    }
}

/// [`NodeTls::dial`] when TLS may be off.
pub fn dial(tls: &Option<Arc<NodeTls>>, name: &str) -> crate::net::Dial {
    match tls {
        // A node name is always a valid server name.
        Some(t) => t.dial(name).unwrap_or_default(),
        None => crate::net::Dial::Plain,
    }
}

/// A client's TLS settings (`quintet --cacert --cert --key`): none of them
/// means plain TCP. Without `--cacert` no server certificate is trusted,
/// which the first call reports with what to pass.
pub fn client_config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, String> {
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    let roots = match ca {
        Some(ca) => read_roots(ca, "--cacert")?,
        None => Arc::new(RootCertStore::empty()),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "--cert")?;
            let private = read_key(key, "--key")?;
            check_key(&chain, &private, cert, key, ("--cert", "--key"))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| format!("--cert {}: {e}", cert.display()))?
        }
        _ => return Err("--cert and --key go together: give both, or neither".into()),
    };
    Ok(Some(Arc::new(config)))
}

/// Who is calling, as the connection's TLS handshake established it.
#[derive(Clone, Debug, Default)]
pub enum Caller {
    /// A port without TLS: nothing is known, nothing is checked (the
    /// network is the only guard).
    #[default]
    Unverified,
    /// TLS without a client certificate (allowed on a client port only).
    Anonymous,
    /// A client certificate signed by the cluster CA.
    Certified(Arc<CertificateDer<'static>>),
}

impl Caller {
    /// The caller of a connection whose handshake ended with these peer
    /// certificates.
    pub fn from_peer_certs(certs: Option<&[CertificateDer<'_>]>) -> Caller {
        match certs.and_then(|c| c.first()) {
            Some(leaf) => Caller::Certified(Arc::new(leaf.clone().into_owned())),
            None => Caller::Anonymous,
        }
    }

    /// Whether the caller's certificate names `name`.
    pub fn is_named(&self, name: &str) -> bool {
        match self {
            Caller::Certified(der) => {
                ParsedCertificate::try_from(der.as_ref()).is_ok_and(|p| cert_names(&p, name))
            }
            _ => false,
        }
    }

    fn check(&self, ok: impl Fn(&Caller) -> bool, who: &str) -> Result<(), Error> {
        match self {
            Caller::Unverified => Ok(()),
            Caller::Anonymous => Err(Error::Unauthenticated(format!(
                "this call needs a client certificate naming {who}"
            ))),
            Caller::Certified(_) if ok(self) => Ok(()),
            Caller::Certified(_) => Err(Error::PermissionDenied(format!(
                "the caller's certificate does not name {who}; only that node may make this call"
            ))),
        }
    }

    /// Participant `id` only.
    pub fn require_participant(&self, id: NodeId) -> Result<(), Error> {
        let name = participant_name(id);
        self.check(|c| c.is_named(&name), &name)
    }

    /// Any participant.
    pub fn require_a_participant(&self) -> Result<(), Error> {
        self.check(
            |c| (1..=MAX_PARTICIPANTS as NodeId).any(|i| c.is_named(&participant_name(i))),
            "a participant (participant-N)",
        )
    }

    /// A coordinator replica (any: whichever leads).
    pub fn require_coordinator(&self) -> Result<(), Error> {
        self.check(|c| c.is_named(COORDINATOR), "a coordinator")
    }

    /// Coordinator replica `id` only.
    pub fn require_coordinator_replica(&self, id: u64) -> Result<(), Error> {
        let name = coordinator_replica_name(id);
        self.check(|c| c.is_named(&name), &name)
    }
}

/// What went wrong in a TLS handshake, seen from the side that dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    /// The server's certificate is not signed by a CA this side trusts.
    NotTrusted,
    /// The server's certificate does not name what was dialed.
    WrongName(String),
    /// The server's certificate has expired (or is not valid yet).
    Expired,
    /// The server refused this side's certificate, or the lack of one.
    Refused(String),
    /// The server answered in TLS to plain TCP.
    ServerWantsTls,
    /// The server does not speak TLS (it closed the handshake).
    ServerHasNoTls,
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsProblem::NotTrusted => write!(
                f,
                "the server's certificate is not trusted: it is not signed by the CA given"
            ),
            TlsProblem::WrongName(name) => {
                write!(f, "the server's certificate does not name {name}")
            }
            TlsProblem::Expired => write!(
                f,
                "the server's certificate has expired (or is not valid yet)"
            ),
            TlsProblem::Refused(why) => {
                write!(f, "the server refused this side's certificate ({why})")
            }
            TlsProblem::ServerWantsTls => {
                write!(f, "the server requires TLS and this side spoke plain TCP")
            }
            TlsProblem::ServerHasNoTls => write!(
                f,
                "the server closed the TLS handshake: it may not have TLS turned on"
            ),
            TlsProblem::Other(e) => write!(f, "TLS failed: {e}"),
        }
    }
}

impl TlsProblem {
    /// The problem a rustls error names, for the side that dialed `name`.
    pub fn from_rustls(e: &rustls::Error, name: &str) -> TlsProblem {
        use rustls::Error as E;
        match e {
            E::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => TlsProblem::NotTrusted,
            E::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => TlsProblem::WrongName(name.to_string()),
            E::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => TlsProblem::Expired,
            E::AlertReceived(alert) => match alert {
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateRequired
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied
                | AlertDescription::DecryptError => TlsProblem::Refused(format!("{alert:?}")),
                other => TlsProblem::Other(format!("the server sent the alert {other:?}")),
            },
            other => TlsProblem::Other(other.to_string()),
        }
    }

    /// The problem an I/O error from a TLS stream carries, if any.
    pub fn from_io(e: &io::Error, name: &str) -> Option<TlsProblem> {
        let inner = e.get_ref()?;
        inner
            .downcast_ref::<rustls::Error>()
            .map(|r| TlsProblem::from_rustls(r, name))
    }
}

/// Why a server refused a connection's handshake, for its one log line.
pub fn describe_refusal(e: &io::Error) -> String {
    use rustls::Error as E;
    let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => "the client closed the connection during the TLS handshake (it may not trust this server's certificate)".into(),
            _ => format!("TLS handshake failed: {e}"),
        };
    };
    match r {
        E::NoCertificatesPresented => {
            "the client presented no certificate; this port requires one signed by --tls-ca".into()
        }
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the client's certificate is not signed by --tls-ca (another cluster's CA?)".into()
        }
        E::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "the client's certificate has expired (or is not valid yet)".into(),
        E::AlertReceived(alert) => format!(
            "the client refused this server's certificate ({alert:?}): does it trust --tls-ca, and does --tls-cert name the address it dialed?"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}
