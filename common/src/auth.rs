//! Client tokens and their roles: the auth file, hashing, and the check a
//! participant makes on every client request.
//!
//! An auth file holds one token per line, hashed:
//!
//! ```text
//! # ROLE       HASH                                                       NAME
//! readwrite    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  app
//! read         sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752  dashboards
//! ```
//!
//! ROLE is `read` (GET and status) or `readwrite` (also PUT and DELETE);
//! NAME is optional and only for people. Blank lines and lines starting
//! with `#` are ignored. Tokens are random strings of 256 bits, so a plain
//! SHA-256 keeps them safe at rest; a request's token is hashed and compared
//! with every entry in constant time (no early exit), and never logged.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::Error;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET and status.
    Read,
    /// GET, status, PUT and DELETE.
    ReadWrite,
}

impl Role {
    /// The name in the auth file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::ReadWrite => "readwrite",
        }
    }

    /// Parses `read` or `readwrite`.
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "readwrite" => Ok(Role::ReadWrite),
            other => Err(format!("unknown role {other:?}: use read or readwrite")),
        }
    }
}

/// One entry of an auth file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its role.
    pub role: Role,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// A label for people (may be empty).
    pub name: String,
}

impl Entry {
    /// The entry's line in an auth file.
    pub fn line(&self) -> String {
        let mut line = format!("{:<9} sha256:{}", self.role.as_str(), hex(&self.hash));
        if !self.name.is_empty() {
            line.push(' ');
            line.push_str(&self.name);
        }
        line
    }
}

/// The tokens a participant accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<Entry>,
}

/// SHA-256 of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Equal in time that does not depend on where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl Tokens {
    /// Parses an auth file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: String| format!("{origin} line {}: {what}", n + 1);
            let mut parts = line.split_whitespace();
            let role = Role::parse(parts.next().unwrap_or_default()).map_err(at)?;
            let hash_field = parts.next().ok_or_else(|| {
                at(
                    "missing the token hash (sha256:HEX); add entries with `quintet auth add`"
                        .into(),
                )
            })?;
            let hash = hash_field
                .strip_prefix("sha256:")
                .and_then(unhex)
                .ok_or_else(|| {
                    at("the hash must be sha256: and 64 hex digits; add entries with `quintet auth add`".into())
                })?;
            let name = parts.collect::<Vec<_>>().join(" ");
            entries.push(Entry { role, hash, name });
        }
        Ok(Tokens { entries })
    }

    /// Reads and parses an auth file.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read auth file {}: {e}", path.display()))?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The role of `token`, if it is one of these. Every entry is compared.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let h = hash(token);
        let mut found = None;
        for e in &self.entries {
            if ct_eq(&h, &e.hash) {
                found = found.max(Some(e.role));
            }
        }
        found
    }

    /// Whether `token` may do what needs `need`: `unauthenticated` when it
    /// is missing or unknown, `permission denied` when its role is short.
    pub fn check(&self, token: Option<&str>, need: Role) -> Result<(), Error> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Error::Unauthenticated(
                "this cluster needs a token: pass --token or set QUINTET_TOKEN".into(),
            ));
        };
        match self.role_of(token) {
            None => Err(Error::Unauthenticated(
                "the token is not known to this replica: check --token (or QUINTET_TOKEN)".into(),
            )),
            Some(role) if role < need => Err(Error::PermissionDenied(format!(
                "the token's role is {}; this needs {}",
                role.as_str(),
                need.as_str()
            ))),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_and_refuses() {
        let rw = Entry {
            role: Role::ReadWrite,
            hash: hash("secret-rw"),
            name: "app".into(),
        };
        let r = Entry {
            role: Role::Read,
            hash: hash("secret-r"),
            name: String::new(),
        };
        let text = format!("# comment\n\n{}\n{}\n", rw.line(), r.line());
        let t = Tokens::parse(&text, "auth").unwrap();
        assert_eq!(t.entries(), &[rw, r]);
        assert_eq!(t.check(Some("secret-rw"), Role::ReadWrite), Ok(()));
        assert_eq!(t.check(Some("secret-r"), Role::Read), Ok(()));
        assert!(matches!(
            t.check(Some("secret-r"), Role::ReadWrite),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            t.check(Some("nope"), Role::Read),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            t.check(None, Role::Read),
            Err(Error::Unauthenticated(_))
        ));
        let bad = Tokens::parse("admin sha256:00", "f").unwrap_err();
        assert!(
            bad.contains("f line 1") && bad.contains("unknown role"),
            "{bad}"
        );
        let bad = Tokens::parse("read sha256:zz", "f").unwrap_err();
        assert!(bad.contains("64 hex digits"), "{bad}");
    }
}
