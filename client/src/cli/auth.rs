//! `quintet auth add` and `quintet auth list`: the auth file of client
//! tokens a participant takes with `--auth-file` (format in
//! `quintet_common::auth`). The file keeps only hashes; a token is shown
//! once, when `add` makes it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use quintet_common::auth::{self, Entry, Role, Tokens};

use super::commands::Failure;
use super::output::table;

/// The `auth` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum AuthCommand {
    /// Append a token with a role; prints a new strong token unless --token
    /// gives one. Participants pick it up on SIGHUP or restart.
    Add(AddArgs),
    /// Show the entries (role, name, start of the hash), never a token.
    List(ListArgs),
}

/// Arguments of `auth add`.
#[derive(Args, Debug, Clone)]
pub struct AddArgs {
    /// The auth file (created, mode 0600, if missing).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// What the token may do: read (GET, status) or readwrite (also PUT, DELETE).
    #[arg(long, value_parser = Role::parse)]
    pub role: Role,
    /// The token to add (at least 16 characters) instead of a generated one.
    #[arg(long)]
    pub token: Option<String>,
    /// A label for people, e.g. the application that uses the token.
    #[arg(long, default_value = "")]
    pub name: String,
}

/// Arguments of `auth list`.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// The auth file.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
}

/// Shortest token `add` accepts.
const MIN_TOKEN: usize = 16;

/// Runs an `auth` subcommand; returns the exit code.
pub fn run(cmd: AuthCommand) -> Result<i32, Failure> {
    match cmd {
        AuthCommand::Add(a) => add(&a),
        AuthCommand::List(a) => list(&a.file),
    }
}

/// A new token: 256 random bits, hex, with a prefix that makes it easy to
/// spot in a leaked config.
fn generate() -> String {
    let words: [u64; 4] = rand::random();
    let hex: String = words.iter().map(|w| format!("{w:016x}")).collect();
    format!("qt_{hex}")
}

fn add(a: &AddArgs) -> Result<i32, Failure> {
    let existing = if a.file.exists() {
        Tokens::load(&a.file)
            .map_err(|e| Failure::usage(format!("{e}; fix the file before adding to it")))?
    } else {
        Tokens::default()
    };
    if a.name.chars().any(|c| c == '\n' || c == '#') {
        return Err(Failure::usage("--name cannot hold a newline or '#'"));
    }
    let (token, generated) = match &a.token {
        Some(t) if t.chars().count() < MIN_TOKEN || t.chars().any(char::is_whitespace) => {
            return Err(Failure::usage(format!(
                "--token must be at least {MIN_TOKEN} characters without spaces; leave it out to generate a strong one"
            )));
        }
        Some(t) => (t.clone(), false),
        None => (generate(), true),
    };
    if existing.role_of(&token).is_some() {
        return Err(Failure::usage(format!(
            "this token is already in {}; nothing was changed",
            a.file.display()
        )));
    }
    let entry = Entry {
        role: a.role,
        hash: auth::hash(&token),
        name: a.name.trim().to_string(),
    };
    append(
        &a.file,
        &entry,
        existing.entries().is_empty() && !a.file.exists(),
    )
    .map_err(|e| Failure::failed(format!("cannot write {}: {e}", a.file.display())))?;
    if generated {
        println!("{token}");
    }
    eprintln!(
        "added a {} token{} to {}; {}participants load it on SIGHUP or restart",
        a.role.as_str(),
        if entry.name.is_empty() {
            String::new()
        } else {
            format!(" ({})", entry.name)
        },
        a.file.display(),
        if generated {
            "the file keeps only its hash, so store the token printed above now; "
        } else {
            ""
        }
    );
    Ok(0)
}

/// Appends one entry (a header first for a new file), and syncs it.
fn append(path: &Path, entry: &Entry, new: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let mut text = String::new();
    if new {
        text.push_str(
            "# quintet client tokens: ROLE sha256:HASH [NAME]; see `quintet auth add --help`\n",
        );
    }
    text.push_str(&entry.line());
    text.push('\n');
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn list(path: &Path) -> Result<i32, Failure> {
    let tokens = Tokens::load(path).map_err(Failure::usage)?;
    let rows: Vec<Vec<String>> = tokens
        .entries()
        .iter()
        .map(|e| {
            let hex: String = e.hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
            let name = if e.name.is_empty() {
                "-"
            } else {
                e.name.as_str()
            };
            vec![
                e.role.as_str().to_string(),
                name.to_string(),
                format!("sha256:{hex}…"),
            ]
        })
        .collect();
    println!("{}", table(&["ROLE", "NAME", "HASH"], &rows));
    eprintln!("{} entries in {}", tokens.entries().len(), path.display());
    Ok(0)
}
