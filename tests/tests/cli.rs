//! End-to-end tests of the `quintet` binary: real processes, real cluster.
//!
//! They live in this crate rather than in `client/tests/` because they need
//! `start_cluster`, and quintet-tests already depends on quintet-client; the
//! binary is found next to the servers that `ensure_binaries` builds. Each
//! test runs the CLI as a user would and checks stdout, stderr and the exit
//! code, which is the CLI's contract (issue 3: "The client: quintet").

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use quintet_client::local::Node;
use quintet_tests::cluster::{ensure_binaries, start_cluster};
use serde_json::Value;

fn quintet_bin() -> PathBuf {
    ensure_binaries().join("quintet")
}

/// Runs `quintet` with `args`, feeding `stdin`, with no QUINTET_* from the caller.
fn quintet(args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(quintet_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("QUINTET_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("quintet starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(stdin).expect("stdin accepts the input");
    drop(input);
    child.wait_with_output().expect("quintet finishes")
}

/// `quintet --endpoints E --output json ARGS...`.
fn json_cmd(endpoints: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut all = vec!["--endpoints", endpoints, "--output", "json"];
    all.extend_from_slice(args);
    quintet(&all, stdin)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("quintet exited, not killed")
}

/// One line on stderr, starting with `error:`.
fn assert_error_line(o: &Output) {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one stderr line expected: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
}

/// An address nothing listens on.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = l.local_addr().expect("local addr").to_string();
    drop(l);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_print_documented_json_and_exit_codes() {
    let mut cluster = start_cluster(5, &[]).await;
    let eps = cluster.endpoints().join(",");

    let put = json_cmd(&eps, &["put", "greeting", "hello world"], b"");
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    let v = json_of(&put);
    assert_eq!(v["key"], "greeting");
    let version = v["version"].as_u64().expect("version is a number");

    // Read at every replica with --at: same value and version.
    for at in 1..=5 {
        let at = at.to_string();
        let get = json_cmd(&eps, &["get", "greeting", "--at", &at], b"");
        assert_eq!(code(&get), 0, "{}", stderr(&get));
        let g = json_of(&get);
        assert_eq!(g["found"], true);
        assert_eq!(g["value"], "hello world");
        assert_eq!(g["version"].as_u64(), Some(version), "replica {at}");
    }

    // Text get prints the raw value, newline-terminated.
    let text = quintet(&["--endpoints", &eps, "get", "greeting"], b"");
    assert_eq!(code(&text), 0);
    assert_eq!(stdout(&text), "hello world\n");

    // Missing key: exit 1, json found:false, text prints nothing, no error line.
    let missing = json_cmd(&eps, &["get", "no-such-key"], b"");
    assert_eq!(code(&missing), 1);
    assert_eq!(
        json_of(&missing),
        serde_json::json!({"key": "no-such-key", "found": false})
    );
    let missing = quintet(
        &["--endpoints", &eps, "get", "no-such-key", "--serializable"],
        b"",
    );
    assert_eq!(code(&missing), 1);
    assert_eq!(stdout(&missing), "");
    assert!(!stderr(&missing).contains("error:"), "{}", stderr(&missing));

    // Put with the value on stdin, byte for byte.
    let piped = json_cmd(&eps, &["put", "from-stdin"], b"line one\nline two");
    assert_eq!(code(&piped), 0, "{}", stderr(&piped));
    let get = json_cmd(&eps, &["get", "from-stdin"], b"");
    assert_eq!(json_of(&get)["value"], "line one\nline two");

    // Oversized value (1 MiB + 1, via stdin) and empty key: exit 3, one error line, nothing stored.
    let big = vec![b'x'; (1 << 20) + 1];
    let over = json_cmd(&eps, &["put", "big"], &big);
    assert_eq!(code(&over), 3, "{}", stderr(&over));
    assert_error_line(&over);
    assert!(stderr(&over).contains("too large"), "{}", stderr(&over));
    assert_eq!(code(&json_cmd(&eps, &["get", "big"], b"")), 1);
    let empty = json_cmd(&eps, &["put", "", "v"], b"");
    assert_eq!(code(&empty), 3);
    assert_error_line(&empty);

    // Delete: deleted true, then false for a key that is gone; versions grow.
    let del = json_cmd(&eps, &["delete", "greeting", "--at", "2"], b"");
    assert_eq!(code(&del), 0, "{}", stderr(&del));
    let d = json_of(&del);
    assert_eq!(d["key"], "greeting");
    assert_eq!(d["deleted"], true);
    assert!(d["version"].as_u64().expect("version") > version);
    let again = json_cmd(&eps, &["delete", "greeting"], b"");
    assert_eq!(json_of(&again)["deleted"], false);
    assert_eq!(code(&json_cmd(&eps, &["get", "greeting"], b"")), 1);

    // --at out of range is a usage error.
    let bad_at = json_cmd(&eps, &["get", "k", "--at", "6"], b"");
    assert_eq!(code(&bad_at), 2);
    assert_error_line(&bad_at);

    // Status: the documented shape, everything reachable, equal digests.
    let status = json_cmd(&eps, &["status"], b"");
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    let s = json_of(&status);
    let c = &s["coordinator"];
    for field in ["address", "reachable", "epoch", "committed"] {
        assert!(c.get(field).is_some(), "coordinator.{field} missing: {s}");
    }
    assert_eq!(c["reachable"], true);
    let parts = s["participants"].as_array().expect("participants array");
    assert_eq!(parts.len(), 5);
    for (i, p) in parts.iter().enumerate() {
        for field in ["id", "address", "reachable", "applied", "digest", "pending"] {
            assert!(p.get(field).is_some(), "participant.{field} missing: {p}");
        }
        assert_eq!(p["id"].as_u64(), Some(i as u64 + 1));
        assert_eq!(p["reachable"], true);
        assert!(p["digest"].is_string());
    }

    // Health: ready participant and coordinator exit 0.
    for node in [Node::Coordinator(1), Node::Participant(3)] {
        let h = json_cmd(&eps, &["health", "--addr", &cluster.addr(node)], b"");
        assert_eq!(code(&h), 0, "{node}: {}", stderr(&h));
        assert_eq!(json_of(&h)["ready"], true);
    }

    // A replica down: status still answers, exits 3, marks it unreachable.
    cluster
        .kill(Node::Participant(5))
        .expect("kill participant 5");
    let status = json_cmd(&eps, &["status"], b"");
    assert_eq!(code(&status), 3, "{}", stdout(&status));
    let s = json_of(&status);
    assert_eq!(s["participants"][4]["reachable"], false);
    assert_eq!(s["participants"][0]["reachable"], true);
    assert_error_line(&status);
}

#[test]
fn unreachable_endpoints_and_dead_ports_exit_3_with_an_error_line() {
    let dead = format!("{},{}", dead_addr(), dead_addr());
    for args in [vec!["get", "k"], vec!["put", "k", "v"], vec!["delete", "k"]] {
        let o = json_cmd(&dead, &args, b"");
        assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
        assert_error_line(&o);
        assert!(stderr(&o).contains("--endpoints"), "says what to check");
    }
    let h = quintet(&["health", "--addr", &dead_addr()], b"");
    assert_eq!(code(&h), 3);
    assert_error_line(&h);
    // Usage errors are clap's: exit 2.
    assert_eq!(code(&quintet(&["get"], b"")), 2);
    assert_eq!(code(&quintet(&["--timeout", "soon", "status"], b"")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_at_the_first_failure_unless_keep_going() {
    let cluster = start_cluster(5, &[]).await;
    let eps = cluster.endpoints().join(",");
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("script.qt");
    std::fs::write(
        &script,
        "# set up\n\
         put a 'first value'\n\
         \n\
         put b \"two\\twords\" --at 2   # a comment\n\
         get a --at 3\n\
         get missing-key\n\
         put c 3\n",
    )
    .expect("write script");
    let path = script.to_str().expect("utf-8 path");

    let stop = quintet(&["--endpoints", &eps, "run", path], b"");
    assert_eq!(code(&stop), 1, "the failing get's code");
    let out = stdout(&stop);
    assert!(
        out.contains("quintet> put a 'first value'"),
        "echoes: {out}"
    );
    assert!(out.contains("first value\n"), "prints results: {out}");
    assert!(!out.contains("put c 3"), "stopped before line 7: {out}");
    assert!(stderr(&stop).contains("line 6"), "{}", stderr(&stop));
    assert_eq!(
        code(&json_cmd(&eps, &["get", "c"], b"")),
        1,
        "line 7 did not run"
    );

    let all = json_cmd(&eps, &["run", path, "--keep-going"], b"");
    assert_eq!(code(&all), 1, "worst code seen");
    let records: Vec<Value> = stdout(&all)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    assert_eq!(records.len(), 5, "{}", stdout(&all));
    assert_eq!(records[1]["line"], 4);
    assert_eq!(records[3]["exit"], 1);
    assert_eq!(records[4]["command"], "put c 3");
    assert_eq!(records[4]["exit"], 0);
    let b = json_of(&json_cmd(&eps, &["get", "b"], b""));
    assert_eq!(b["value"], "two\twords");

    // A usage error in a script stops it with exit 2, and `-` reads stdin.
    let bad = quintet(
        &["--endpoints", &eps, "run", "-"],
        b"put d 4\nfrobnicate\nput e 5\n",
    );
    assert_eq!(code(&bad), 2);
    assert!(stderr(&bad).contains("line 2"), "{}", stderr(&bad));
    assert_eq!(code(&json_cmd(&eps, &["get", "e"], b"")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_reads_piped_commands_and_continues_after_errors() {
    let cluster = start_cluster(5, &[]).await;
    let eps = cluster.endpoints().join(",");
    let input = b"put k \"hello shell\"\n\
                  bogus command\n\
                  get k --at 4\n\
                  put '' empty-key\n\
                  delete k\n\
                  get k\n\
                  exit\n\
                  put after-exit 1\n";
    let o = quintet(&["--endpoints", &eps, "shell"], input);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("OK version "), "{out}");
    assert_eq!(lines[1], "hello shell");
    assert!(lines[2].starts_with("OK deleted version "), "{out}");
    assert_eq!(lines[3], "(not found)");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 2, "two errors: {err}");
    assert!(err.lines().all(|l| l.starts_with("error: ")), "{err}");
    assert_eq!(
        code(&json_cmd(&eps, &["get", "after-exit"], b"")),
        1,
        "exit ends the shell"
    );
}

#[test]
fn demo_starts_its_own_cluster_and_every_check_holds() {
    let o = quintet(&["demo"], b"");
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "stdout:\n{out}\nstderr:\n{}", stderr(&o));
    for op in ["PUT", "GET", "DELETE"] {
        let rows = out
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(op))
            .count();
        assert!(rows >= 5, "{op}: {rows} rows\n{out}");
    }
    assert!(!out.contains('✗'), "{out}");
    assert!(out.contains("digests: equal"), "{out}");
    assert!(out.contains("writes/s"), "{out}");
}

#[test]
fn demo_failover_kills_wipes_and_rejoins_a_replica_and_every_check_holds() {
    let o = quintet(&["--output", "json", "demo", "--failover"], b"");
    assert_eq!(
        code(&o),
        0,
        "stdout:\n{}\nstderr:\n{}",
        stdout(&o),
        stderr(&o)
    );
    let v = json_of(&o);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["writes_while_down"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["stale_reads"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["missing"].as_array().map(Vec::len), Some(0), "{v}");
    assert!(v["rejoin_ms"].as_u64().is_some(), "{v}");
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 5);
    assert!(checks.iter().all(|c| c["held"] == true), "{v}");

    let refused = quintet(&["--endpoints", "127.0.0.1:1", "demo", "--failover"], b"");
    assert_eq!(code(&refused), 2, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("local cluster of its own"));
}
