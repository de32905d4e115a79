//! Runs the built `hydratecache` binary: `tail` in one process, `publish`
//! in others, lines read with a timeout each.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hydratecache");

/// Bound on each line we wait for (servers restart within it).
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on a whole `publish` or `check` run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// SIGINT must end `tail` within a second; this generous bound only
/// catches hangs on a loaded machine. The measured time is printed.
pub const SIGINT_BOUND: Duration = Duration::from_secs(5);

fn lines(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `hydratecache tail`, killed when dropped.
pub struct Tail {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stdout line read so far (for failure messages and transcripts).
    pub seen: Vec<String>,
    stderr_seen: Vec<String>,
}

impl Tail {
    /// Starts `hydratecache tail <args>` and waits until it says on stderr
    /// that the server confirmed the subscription.
    pub fn start(args: &[&str]) -> Tail {
        let mut child = Command::new(BIN)
            .arg("tail")
            .args(args)
            .env("COLUMNS", "200")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {BIN}: {e}"));
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        let mut tail = Tail {
            child,
            stdout,
            stderr,
            seen: Vec::new(),
            stderr_seen: Vec::new(),
        };
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tail.stderr.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.starts_with("subscribed to ");
                    tail.stderr_seen.push(line);
                    if ready {
                        return tail;
                    }
                }
                Err(e) => panic!(
                    "tail {args:?} did not report its subscription ({e:?}); exit: {:?}; stderr: {:?}",
                    tail.child.try_wait(),
                    tail.stderr_seen
                ),
            }
        }
    }

    /// The next stdout line, within [`LINE_TIMEOUT`].
    pub fn next_line(&mut self, what: &str) -> String {
        self.next_line_within(LINE_TIMEOUT)
            .unwrap_or_else(|| self.fail(&format!("no line within {LINE_TIMEOUT:?}: {what}")))
    }

    /// The next stdout line if one comes within `timeout`.
    pub fn next_line_within(&mut self, timeout: Duration) -> Option<String> {
        match self.stdout.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                // Let the stderr reader finish too.
                std::thread::sleep(Duration::from_millis(100));
                self.fail("tail's stdout closed")
            }
        }
    }

    /// Asserts that no line comes within `quiet`.
    pub fn expect_no_line(&mut self, quiet: Duration) {
        if let Some(line) = self.next_line_within(quiet) {
            self.fail(&format!("unexpected line {line:?}"));
        }
    }

    /// Sends SIGINT and waits (at most [`SIGINT_BOUND`] + 5 s) for the exit.
    pub fn interrupt(&mut self) -> (ExitStatus, Duration) {
        let pid = self.child.id().to_string();
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT {pid} failed");
        let status = self.wait(SIGINT_BOUND + Duration::from_secs(5));
        (status, sent.elapsed())
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => self.fail(&format!("tail still runs after {timeout:?}")),
                Err(e) => self.fail(&format!("wait: {e}")),
            }
        }
    }

    /// stderr lines so far (waits briefly for the reader).
    pub fn stderr(&mut self) -> Vec<String> {
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.clone()
    }

    fn fail(&mut self, message: &str) -> ! {
        let stderr = self.stderr();
        panic!(
            "{message}\n  stdout so far: {:#?}\n  stderr: {stderr:#?}\n  exit: {:?}",
            self.seen,
            self.child.try_wait()
        )
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `hydratecache <args>` with `stdin`, within [`RUN_TIMEOUT`].
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {BIN}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let bytes = stdin.map(<[u8]>::to_vec).unwrap_or_default();
    // A writer thread: a large stdin must not block us while the child
    // waits for us to read its output.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait") {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("hydratecache {args:?} still runs after {RUN_TIMEOUT:?}");
            }
        }
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// `run`, asserting success; returns stdout.
pub fn run_ok(args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "hydratecache {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Publishes and returns the full publisher id it printed.
pub fn publish(url: &str, topic: &str, key: &str, rest: &[&str], stdin: Option<&[u8]>) -> String {
    let mut args = vec!["publish", url, topic, key];
    args.extend_from_slice(rest);
    let out = run_ok(&args, stdin);
    let line = out.trim_end();
    assert_eq!(out.lines().count(), 1, "publish prints one line: {out:?}");
    assert!(line.starts_with("published "), "{line}");
    assert!(
        line.contains(&format!(" topic={topic} key={key} ")),
        "{line}"
    );
    assert!(line.contains(" seq=1 "), "{line}");
    assert!(line.contains(" wire="), "{line}");
    field(line, "publisher").to_owned()
}

/// The value of `name=` in a line of `name=value` words.
pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        + name.len()
        + 2;
    let rest = &line[start..];
    rest.split(' ').next().unwrap_or_default()
}

/// A text line with what varies between runs replaced: the time by `T`,
/// the publisher by `P`, the TTL left by `TTL`; words joined by one space
/// (the kind column is padded).
pub fn normalize(line: &str) -> String {
    let (time, rest) = line.split_at(line.len().min(12));
    let b = time.as_bytes();
    assert!(
        b.len() == 12
            && b[2] == b':'
            && b[5] == b':'
            && b[8] == b'.'
            && [0, 1, 3, 4, 6, 7, 9, 10, 11]
                .iter()
                .all(|&i| b[i].is_ascii_digit()),
        "line does not start with HH:MM:SS.mmm: {line:?}"
    );
    rest.split_whitespace()
        .map(|word| {
            if let Some(p) = word.strip_prefix("publisher=") {
                assert!(
                    p.len() == 8 && p.chars().all(|c| c.is_ascii_hexdigit()),
                    "{line}"
                );
                "publisher=P".to_owned()
            } else if word.starts_with("ttl=") {
                "ttl=TTL".to_owned()
            } else {
                word.to_owned()
            }
        })
        .fold("T".to_owned(), |acc, w| acc + " " + &w)
}

/// What every backend must show: updates (TTL, version, JSON value),
/// deletes and raw values, in text and JSON, in publish order.
pub fn tail_shows_what_publish_sends(url: &str, topic: &str, extra: &[&str]) {
    let mut args = vec![url, topic];
    args.extend_from_slice(extra);
    let mut text = Tail::start(&args);
    let mut json_args = args.clone();
    json_args.extend_from_slice(&["--format", "json"]);
    let mut json = Tail::start(&json_args);

    let p1 = publish(
        url,
        topic,
        "user:42",
        &[
            r#"{"name":"Ada","age":36,"tags":["x"]}"#,
            "--ttl",
            "30s",
            "--version",
            "7",
        ],
        None,
    );
    let p2 = publish(url, topic, "user:42", &["--delete", "--version", "8"], None);
    let p3 = publish(url, topic, "blob", &["--raw"], Some(&[0x00, 0xff, 0x10]));
    let p4 = publish(url, topic, "list", &["-"], Some(b"[1, 2.5, null]\n"));

    let expected = [
        r#"T update key=user:42 publisher=P seq=1 version=7 ttl=TTL value={"age":36,"name":"Ada","tags":["x"]}"#,
        "T delete key=user:42 publisher=P seq=1 version=8",
        "T update key=blob publisher=P seq=1 value=hex:00ff10",
        "T update key=list publisher=P seq=1 value=[1,2.5,null]",
    ];
    for (i, (want, publisher)) in expected.iter().zip([&p1, &p2, &p3, &p4]).enumerate() {
        let line = text.next_line(&format!("text line {i}"));
        // Kinds are padded to one width; compare words.
        let got = normalize(&line);
        assert_eq!(got, *want, "text line {i}: {line}");
        assert_eq!(field(&line, "publisher"), &publisher[..8], "{line}");
        if i == 0 {
            let ttl = field(&line, "ttl");
            let secs: f64 = ttl.trim_end_matches('s').parse().unwrap_or(-1.0);
            assert!((20.0..=30.0).contains(&secs), "TTL left {ttl} in {line}");
        }
    }

    let objects: Vec<serde_json::Value> = (0..4)
        .map(|i| {
            let line = json.next_line(&format!("json line {i}"));
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("json line {i} {line:?}: {e}"))
        })
        .collect();
    let keys = [
        "time",
        "kind",
        "topic",
        "key",
        "publisher",
        "sequence",
        "version",
        "ttl_remaining_ms",
        "published_at",
        "value",
        "value_encoding",
        "reason",
        "missed",
        "error",
    ];
    for (i, o) in objects.iter().enumerate() {
        let map = o
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {o}"));
        assert_eq!(map.len(), keys.len(), "{o}");
        for key in keys {
            assert!(map.contains_key(key), "{key} missing in {o}");
        }
        assert_eq!(o["topic"], topic);
        assert_eq!(o["sequence"], 1, "{o}");
        assert_eq!(o["error"], serde_json::Value::Null, "{o}");
        assert_eq!(o["publisher"], [&p1, &p2, &p3, &p4][i].as_str(), "{o}");
        let time = o["time"].as_str().unwrap_or_default();
        assert!(time.len() == 27 && time.ends_with('Z'), "time {time}");
    }
    let o = &objects[0];
    assert_eq!(
        (o["kind"].as_str(), o["key"].as_str()),
        (Some("update"), Some("user:42"))
    );
    assert_eq!(o["version"], 7);
    assert_eq!(
        o["value"],
        serde_json::json!({"name": "Ada", "age": 36, "tags": ["x"]})
    );
    assert_eq!(o["value_encoding"], "cbor");
    let ttl = o["ttl_remaining_ms"].as_u64().unwrap_or(0);
    assert!((20_000..=30_000).contains(&ttl), "ttl_remaining_ms {ttl}");
    let o = &objects[1];
    assert_eq!(
        (o["kind"].as_str(), o["version"].as_u64()),
        (Some("delete"), Some(8))
    );
    assert_eq!(
        (&o["value"], &o["value_encoding"]),
        (&serde_json::Value::Null, &serde_json::Value::Null)
    );
    let o = &objects[2];
    assert_eq!(
        (o["value"].as_str(), o["value_encoding"].as_str()),
        (Some("00ff10"), Some("hex"))
    );
    let o = &objects[3];
    assert_eq!(o["value"], serde_json::json!([1, 2.5, null]));

    text.expect_no_line(Duration::from_millis(300));
    json.expect_no_line(Duration::from_millis(100));
    for tail in [&mut text, &mut json] {
        let (status, took) = tail.interrupt();
        assert!(status.success(), "tail after SIGINT: {status}");
        assert!(took < SIGINT_BOUND, "SIGINT took {took:?}");
    }
}

/// A message from another client that is no envelope shows as an error line,
/// and the next real message still arrives.
pub fn garbage_is_an_error_line(url: &str, topic: &str, extra: &[&str], inject: impl FnOnce()) {
    let mut args = vec![url, topic];
    args.extend_from_slice(extra);
    let mut tail = Tail::start(&args);
    let mut json_args = args.clone();
    json_args.extend_from_slice(&["--format", "json"]);
    let mut json = Tail::start(&json_args);
    inject();
    let publisher = publish(url, topic, "after", &["\"still here\""], None);

    let line = tail.next_line("the error line");
    let got = normalize(&line);
    assert!(got.starts_with("T error "), "{line}");
    assert!(
        line.contains("malformed") || line.contains("envelope"),
        "{line}"
    );
    let line = tail.next_line("the update after the garbage");
    assert_eq!(
        normalize(&line),
        r#"T update key=after publisher=P seq=1 value="still here""#
    );
    assert!(publisher.starts_with(field(&line, "publisher")));

    let o: serde_json::Value = serde_json::from_str(&json.next_line("json error")).expect("json");
    assert_eq!(o["kind"], "error");
    assert!(o["error"].as_str().is_some_and(|e| !e.is_empty()), "{o}");
    let o: serde_json::Value = serde_json::from_str(&json.next_line("json update")).expect("json");
    assert_eq!(
        (o["kind"].as_str(), o["value"].as_str()),
        (Some("update"), Some("still here"))
    );
}

/// Across a server restart (`restart` kills it and starts it again) `tail`
/// shows an interrupted line (when the loss is noticed), then a gap line,
/// then delivery again. Returns the text transcript.
pub fn restart_shows_a_gap(
    url: &str,
    topic: &str,
    tail_extra: &[&str],
    publish_extra: &[&str],
    retry_every: Duration,
    restart: impl FnOnce(),
) -> Vec<String> {
    let mut args = vec![url, topic];
    args.extend_from_slice(tail_extra);
    let mut tail = Tail::start(&args);
    for i in 1..=2 {
        let value = format!(r#"{{"before":{i}}}"#);
        let mut rest = vec![value.as_str()];
        rest.extend_from_slice(publish_extra);
        publish(url, topic, "k", &rest, None);
        let line = tail.next_line("a message before the restart");
        assert!(
            line.contains(&format!(r#"value={{"before":{i}}}"#)),
            "{line}"
        );
    }
    restart();
    let restarted = Instant::now();
    // Publish until a message arrives: subscribers need a moment to
    // reconnect, and what is published before they do is lost (that is
    // what the gap says).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut attempt = 0;
    let mut gap_at = None;
    let mut interrupted_at = None;
    'outer: loop {
        attempt += 1;
        let value = format!(r#"{{"after":{attempt}}}"#);
        let mut args = vec!["publish", url, topic, "k", value.as_str()];
        args.extend_from_slice(publish_extra);
        let out = run(&args, None);
        if !out.status.success() {
            println!(
                "publish {attempt} after the restart failed (server not back yet): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let until = Instant::now() + retry_every;
        while let Some(line) =
            tail.next_line_within(until.saturating_duration_since(Instant::now()))
        {
            let words = normalize(&line);
            if words.starts_with("T gap ") {
                assert!(line.contains("reason="), "{line}");
                gap_at.get_or_insert(tail.seen.len() - 1);
            } else if words.starts_with("T interrupted ") {
                assert!(line.contains("reason="), "{line}");
                interrupted_at.get_or_insert(tail.seen.len() - 1);
            } else if words.starts_with("T resumed") {
            } else if line.contains(r#"value={"after":"#) {
                break 'outer;
            } else {
                panic!(
                    "unexpected line after the restart: {line}\nall: {:#?}",
                    tail.seen
                );
            }
        }
        if Instant::now() >= deadline {
            let stderr = tail.stderr();
            panic!(
                "nothing delivered {:?} after the restart; lines: {:#?}; stderr: {stderr:#?}",
                restarted.elapsed(),
                tail.seen,
            );
        }
    }
    let first_after = tail.seen.len() - 1;
    let gap = gap_at.unwrap_or_else(|| {
        panic!(
            "no gap line before the first message after the restart: {:#?}",
            tail.seen
        )
    });
    assert!(gap < first_after);
    let interrupted = interrupted_at.unwrap_or_else(|| {
        panic!(
            "no interrupted line before the gap after the restart: {:#?}",
            tail.seen
        )
    });
    assert!(interrupted < gap, "{:#?}", tail.seen);
    println!(
        "delivery again {:?} after the restart ({attempt} publish attempts)",
        restarted.elapsed()
    );
    let (status, took) = tail.interrupt();
    assert!(status.success(), "{status}");
    assert!(took < SIGINT_BOUND, "SIGINT took {took:?}");
    println!("--- tail transcript ---");
    for line in &tail.seen {
        println!("{line}");
    }
    tail.seen.clone()
}

/// SIGINT ends `tail` with exit status 0, quickly; stdout stays clean.
pub fn sigint_ends_tail(url: &str, topic: &str, extra: &[&str]) {
    let mut args = vec![url, topic];
    args.extend_from_slice(extra);
    let mut tail = Tail::start(&args);
    let (status, took) = tail.interrupt();
    println!("tail exited {took:?} after SIGINT");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(took < SIGINT_BOUND, "SIGINT took {took:?}");
    assert!(tail.seen.is_empty());
}

/// Nothing listens at `url`: exit status 1 and one line naming the refusal,
/// for `tail` and `publish`; `check` explains it.
pub fn refused_is_exit_1_and_one_line(url: &str) {
    for args in [
        vec!["tail", url, "topic"],
        vec!["publish", url, "topic", "k", "1"],
    ] {
        let started = Instant::now();
        let out = run(&args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{args:?} ({:?}): {stderr}", started.elapsed());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        assert!(stderr.starts_with("error: cannot connect to "), "{stderr}");
        assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
        assert!(out.stdout.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "refusal took {:?}",
            started.elapsed()
        );
    }
    let out = run(&["check", url], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("problem      connection refused"),
        "{stdout}"
    );
    assert!(stdout.contains("try          "), "{stdout}");
}

/// `check` connects, describes the server and round-trips a message.
pub fn check_works(url: &str, backend: &str, server: &str) -> String {
    let out = run_ok(&["check", url], None);
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("backend      {backend}").as_str())
    );
    assert!(out.contains(&format!("server       {server}")), "{out}");
    assert!(out.contains("\nmax message  "), "{out}");
    assert!(out.contains("\nreplay       "), "{out}");
    let rt = lines
        .iter()
        .find(|l| l.starts_with("round trip   "))
        .unwrap_or_else(|| panic!("no round trip in {out}"));
    assert!(
        rt.contains("ms on topic hydratecache-check-")
            || rt.contains("s on topic hydratecache-check-"),
        "{rt}"
    );
    assert_eq!(lines.last().copied(), Some("ok"));
    out
}
