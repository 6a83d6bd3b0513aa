//! Reads a container's log as an SRE does: from its end. A process that dies of an exception or a
//! panic prints its cause in one line — the last line of a Python traceback, the deepest `Caused by:`
//! of a Java trace, the `panic:` before a Go goroutine dump — and that line, not the first line that
//! looks alarming, is what a diagnosis quotes. Pure functions over the lines; no I/O.

use std::collections::HashMap;

use serde::Serialize;

/// How a log ends, when it ends in a recognisable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// A Python traceback (the last of a chain).
    PythonException,
    /// A Java or Kotlin exception (`Exception in thread …`, `Caused by:` chains).
    JavaException,
    /// A .NET unhandled exception (`---> inner` chains).
    DotnetException,
    /// A Node.js error with its stack.
    NodeError,
    /// A Go `panic:` (the goroutine dump after it skipped).
    GoPanic,
    /// A Go runtime `fatal error:`.
    GoFatal,
    /// A Rust panic (`thread '…' panicked at …`).
    RustPanic,
    /// The shell or the runtime could not run a program: `exec …: exec format error`, `…: not found`,
    /// `permission denied`.
    Exec,
    /// No stack or panic, but the log's last words are an error.
    ErrorLine,
}

/// The line of a log that says why the process failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decisive {
    /// How the log ends.
    pub ending: Ending,
    /// The line naming the cause: the final exception, the innermost cause, the panic message.
    pub line: String,
    /// Where the cause surfaced, when the decisive line is an inner cause: the outermost exception
    /// of a Java or .NET chain, the first exception of a chained Python traceback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// Characters of a decisive line kept at most.
const MAX_LINE_CHARS: usize = 400;

fn clip(line: &str) -> String {
    let line = line.trim();
    if line.chars().count() > MAX_LINE_CHARS {
        format!("{}…", line.chars().take(MAX_LINE_CHARS).collect::<String>())
    } else {
        line.to_owned()
    }
}

fn indented(line: &str) -> bool {
    line.starts_with(' ') || line.starts_with('\t')
}

/// A stack frame of Java, Kotlin, Node or .NET: an indented `at …`.
fn is_frame(line: &str) -> bool {
    indented(line) && line.trim_start().starts_with("at ")
}

/// Finds one kind of ending in a log: where it starts, and its decisive line.
type Reader = fn(&[&str]) -> Option<(usize, Decisive)>;

/// The decisive line of a log, read from its end; `None` when it ends in nothing recognisable.
pub fn decisive(lines: &[&str]) -> Option<Decisive> {
    // Each reader returns where its ending starts; the latest ending in the log is the one that
    // killed the process (a retried error logged earlier is not).
    let readers: [Reader; 7] = [python, java, dotnet, go, rust_panic, exec, node];
    readers
        .iter()
        .filter_map(|read| read(lines))
        .max_by_key(|(at, _)| *at)
        .map(|(_, found)| found)
        .or_else(|| error_line(lines))
}

const PYTHON_CHAINS: [&str; 2] = [
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
];

/// The exception line after a traceback header: the first line at column 0 that is not the header.
fn python_exception<'a>(lines: &[&'a str], header: usize) -> Option<&'a str> {
    lines[header + 1..]
        .iter()
        .copied()
        .find(|l| !l.trim().is_empty() && !indented(l) && !l.contains("Traceback ("))
}

fn python(lines: &[&str]) -> Option<(usize, Decisive)> {
    let headers: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_end().ends_with("Traceback (most recent call last):"))
        .map(|(i, _)| i)
        .collect();
    let last = *headers.last()?;
    let line = python_exception(lines, last)?;
    // Walk the chain back while the text between two tracebacks says one led to the other.
    let mut first = last;
    for &earlier in headers.iter().rev().skip(1) {
        let between = &lines[earlier..first];
        if between.iter().any(|l| PYTHON_CHAINS.iter().any(|c| l.contains(c))) {
            first = earlier;
        } else {
            break;
        }
    }
    let context =
        (first != last).then(|| python_exception(lines, first)).flatten().filter(|c| *c != line).map(clip);
    Some((last, Decisive { ending: Ending::PythonException, line: clip(line), context }))
}

/// The start of the stack trace block that ends at or before `end` (its header line: the line
/// before its first frame that is not a frame).
fn trace_header(lines: &[&str], frame: usize) -> Option<usize> {
    let mut at = frame;
    while at > 0 && (is_frame(lines[at]) || lines[at].trim_start().starts_with("...")) {
        at -= 1;
    }
    (!is_frame(lines[at]) && !lines[at].trim().is_empty()).then_some(at)
}

fn looks_like_java(header: &str) -> bool {
    let name = header.trim().split([':', ' ']).next().unwrap_or_default();
    header.contains("Exception in thread ")
        || header.trim_start().starts_with("Caused by: ")
        || (name.contains('.') && (name.ends_with("Exception") || name.ends_with("Error")))
}

fn java(lines: &[&str]) -> Option<(usize, Decisive)> {
    let thread = lines.iter().rposition(|l| l.contains("Exception in thread \""));
    let frame = lines.iter().rposition(|l| {
        is_frame(l)
            && (l.contains(".java:")
                || l.contains(".kt:")
                || l.contains("(Native Method)")
                || l.contains("(Unknown Source)"))
    });
    let header = match (frame.and_then(|f| trace_header(lines, f)), thread) {
        (Some(header), Some(thread)) => header.max(thread),
        (Some(header), None) => header,
        (None, Some(thread)) => thread,
        (None, None) => return None,
    };
    // The whole trace: back to its outermost header, then forward through its `Caused by:` chain.
    let mut top = header;
    while top > 0 && lines[top].trim_start().starts_with("Caused by: ") {
        let Some(frame) = lines[..top].iter().rposition(|l| is_frame(l)) else { break };
        match trace_header(lines, frame) {
            Some(earlier) if earlier < top => top = earlier,
            _ => break,
        }
    }
    if !looks_like_java(lines[top]) {
        return None;
    }
    let strip = |l: &str| {
        let l = l.trim();
        let l = l.strip_prefix("Caused by: ").unwrap_or(l);
        match l.split_once("Exception in thread \"") {
            Some((_, rest)) => rest.split_once("\" ").map_or(l, |(_, e)| e).to_owned(),
            None => l.to_owned(),
        }
    };
    let innermost =
        lines[top..].iter().rposition(|l| l.trim_start().starts_with("Caused by: ")).map(|i| top + i);
    let (line, context) = match innermost {
        Some(cause) => (strip(lines[cause]), Some(clip(&strip(lines[top])))),
        None => (strip(lines[top]), None),
    };
    Some((top, Decisive { ending: Ending::JavaException, line: clip(&line), context }))
}

fn dotnet(lines: &[&str]) -> Option<(usize, Decisive)> {
    let top = lines.iter().rposition(|l| {
        l.contains("Unhandled exception. ") || l.trim_start().starts_with("Unhandled Exception: ")
    })?;
    let outer = lines[top]
        .split_once("Unhandled exception. ")
        .or_else(|| lines[top].split_once("Unhandled Exception: "))
        .map_or(lines[top], |(_, e)| e);
    // Inner exceptions follow ` ---> `, on the top line itself or on the lines after it.
    let inner = lines[top..]
        .iter()
        .take_while(|l| !l.contains("--- End of inner exception stack trace ---"))
        .filter_map(|l| l.rsplit_once(" ---> ").map(|(_, e)| e))
        .last();
    let outer = outer.split_once(" ---> ").map_or(outer, |(o, _)| o);
    let (line, context) = match inner {
        Some(inner) => (inner, Some(clip(outer))),
        None => (outer, None),
    };
    Some((top, Decisive { ending: Ending::DotnetException, line: clip(line), context }))
}

fn go(lines: &[&str]) -> Option<(usize, Decisive)> {
    let at = lines.iter().rposition(|l| l.starts_with("panic: ") || l.starts_with("fatal error: "))?;
    let (ending, message) = match lines[at].strip_prefix("panic: ") {
        Some(message) => (Ending::GoPanic, message),
        None => (Ending::GoFatal, lines[at].strip_prefix("fatal error: ").unwrap_or(lines[at])),
    };
    // A re-panic prints `panic: first [recovered]` and then the second panic: the first is the cause.
    let message = message.trim_end_matches(" [recovered]");
    Some((at, Decisive { ending, line: clip(message), context: None }))
}

fn rust_panic(lines: &[&str]) -> Option<(usize, Decisive)> {
    let at = lines.iter().rposition(|l| l.contains("' panicked at "))?;
    let after = lines[at].split_once("' panicked at ").map(|(_, rest)| rest)?;
    // Rust ≥ 1.73: `panicked at src/main.rs:4:5:` and the message on the next line; before:
    // `panicked at 'message', src/main.rs:4:5`.
    let message = if let Some(quoted) = after.strip_prefix('\'') {
        quoted.rsplit_once("', ").map_or(quoted, |(m, _)| m).to_owned()
    } else {
        let location = after.trim_end_matches(':');
        let next = lines.get(at + 1).map(|l| l.trim()).filter(|l| !l.is_empty() && !l.starts_with("note: "));
        next.map_or_else(|| format!("panicked at {location}"), |m| format!("{m} (at {location})"))
    };
    Some((at, Decisive { ending: Ending::RustPanic, line: clip(&message), context: None }))
}

/// How the shell or runtime says it could not run a program.
const EXEC_FAILURES: [&str; 5] =
    ["exec format error", "no such file or directory", "not found", "permission denied", "command not found"];

fn exec(lines: &[&str]) -> Option<(usize, Decisive)> {
    let at = lines.iter().rposition(|l| {
        let lower = l.trim().to_ascii_lowercase();
        let runs = lower.starts_with("exec ")
            || lower.contains("exec user process caused")
            || lower.starts_with("/bin/sh: ")
            || lower.starts_with("sh: ")
            || lower.starts_with("/bin/bash: ")
            || lower.starts_with("bash: ")
            || lower.starts_with("env: ")
            || (lower.starts_with('/') && lower.contains(": line "));
        runs && EXEC_FAILURES.iter().any(|f| lower.ends_with(f) || lower.ends_with(&format!("{f}\"")))
    })?;
    Some((at, Decisive { ending: Ending::Exec, line: clip(lines[at]), context: None }))
}

fn looks_like_js_frame(line: &str) -> bool {
    is_frame(line)
        && (line.contains(".js:")
            || line.contains(".mjs:")
            || line.contains(".cjs:")
            || line.contains(".ts:")
            || line.contains("node:")
            || line.contains("<anonymous>"))
}

fn node(lines: &[&str]) -> Option<(usize, Decisive)> {
    let frame = lines.iter().rposition(|l| looks_like_js_frame(l))?;
    let header = trace_header(lines, frame)?;
    let line = lines[header].trim();
    // `Error: …`, `TypeError: …`, `Error [ERR_…]: …`, `AggregateError [ECONNREFUSED]: …`.
    let name = line.split([':', ' ', '[']).next().unwrap_or_default();
    if !(name.ends_with("Error") || name.ends_with("Exception")) || name.contains('.') {
        return None;
    }
    Some((header, Decisive { ending: Ending::NodeError, line: clip(line), context: None }))
}

/// How many trailing lines a last error line is looked for in.
const LAST_WORDS: usize = 8;

fn error_line(lines: &[&str]) -> Option<Decisive> {
    let start = lines.len().saturating_sub(LAST_WORDS);
    let line = lines[start..].iter().rev().find(|l| {
        let lower = l.to_ascii_lowercase();
        ["error", "fatal", "panic", "exception", "failed"].iter().any(|w| lower.contains(w))
    })?;
    Some(Decisive { ending: Ending::ErrorLine, line: clip(line), context: None })
}

/// A log line without its leading timestamp (`2026-12-06T07:40:00.123Z `, `2026/12/06 07:40:00 `,
/// `[2026-12-06 07:40:00,123] `), for telling repeated lines apart from new ones.
pub fn without_timestamp(line: &str) -> &str {
    let prefix = line
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || "-:/.TZ+,[] ".contains(*c)))
        .map_or(line.len(), |(i, _)| i);
    if line[..prefix].chars().filter(char::is_ascii_digit).count() >= 6 { &line[prefix..] } else { line }
}

/// `lines` with each line that repeats (timestamps aside) kept once, at its last place, counted:
/// `connection refused (×48)`.
pub fn count_repeats(lines: &[String]) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for line in lines {
        *counts.entry(without_timestamp(line)).or_default() += 1;
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut kept = Vec::new();
    for line in lines {
        let key = without_timestamp(line);
        let total = counts.get(key).copied().unwrap_or(1);
        let nth = seen.entry(key).or_default();
        *nth += 1;
        if key.trim().is_empty() || total == 1 {
            kept.push(line.clone());
        } else if *nth == total {
            kept.push(format!("{line} (×{total})"));
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(log: &str) -> Option<Decisive> {
        decisive(&log.lines().collect::<Vec<_>>())
    }

    fn line_of(log: &str) -> String {
        read(log).map(|d| d.line).unwrap_or_default()
    }

    #[test]
    fn a_python_traceback_is_read_from_its_last_line() {
        let log = "INFO starting worker\nTraceback (most recent call last):\n  File \"/app/main.py\", line 12, in <module>\n    db.connect()\n  File \"/usr/lib/python3.11/site-packages/psycopg2/__init__.py\", line 122, in connect\n    conn = _connect(dsn)\npsycopg2.OperationalError: connection to server at \"db\" (10.0.0.5), port 5432 failed: FATAL:  password authentication failed for user \"app\"\n";
        let found = read(log).expect("decisive");
        assert_eq!(found.ending, Ending::PythonException);
        assert!(found.line.ends_with("password authentication failed for user \"app\""), "{found:?}");
        assert_eq!(found.context, None);
    }

    #[test]
    fn a_chained_python_traceback_names_its_final_exception_and_where_it_began() {
        let log = "Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\nKeyError: 'DATABASE_URL'\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"a.py\", line 3, in <module>\n    raise RuntimeError(\"config incomplete\")\nRuntimeError: config incomplete\n";
        let found = read(log).expect("decisive");
        assert_eq!(found.line, "RuntimeError: config incomplete");
        assert_eq!(found.context.as_deref(), Some("KeyError: 'DATABASE_URL'"));
    }

    #[test]
    fn a_java_trace_is_read_from_its_deepest_cause() {
        let log = "Exception in thread \"main\" org.springframework.beans.factory.BeanCreationException: Error creating bean with name 'dataSource'\n\tat org.springframework.beans.factory.support.AbstractAutowireCapableBeanFactory.initializeBean(AbstractAutowireCapableBeanFactory.java:1804)\n\t... 21 more\nCaused by: org.hibernate.HibernateException: Unable to determine Dialect\n\tat org.hibernate.X.y(X.java:10)\nCaused by: java.net.UnknownHostException: postgres.shop.svc: Name or service not known\n\tat java.base/java.net.Inet6AddressImpl.lookupAllHostAddr(Native Method)\n\t... 40 more\n";
        let found = read(log).expect("decisive");
        assert_eq!(found.ending, Ending::JavaException);
        assert_eq!(found.line, "java.net.UnknownHostException: postgres.shop.svc: Name or service not known");
        assert!(found.context.as_deref().is_some_and(|c| c.starts_with("org.springframework")), "{found:?}");
    }

    #[test]
    fn a_go_panic_is_named_and_its_goroutine_dump_skipped() {
        let mut log = String::from(
            "2026/12/06 07:00:00 starting\npanic: runtime error: invalid memory address or nil pointer dereference\n[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x4a1b2c]\n\ngoroutine 1 [running]:\n",
        );
        for i in 0..300 {
            log.push_str(&format!("main.f{i}(...)\n\t/app/main.go:{i} +0x1d\n"));
        }
        let found = read(&log).expect("decisive");
        assert_eq!(found.ending, Ending::GoPanic);
        assert_eq!(found.line, "runtime error: invalid memory address or nil pointer dereference");
        assert_eq!(
            line_of("fatal error: concurrent map writes\n\ngoroutine 7 [running]:\n"),
            "concurrent map writes"
        );
    }

    #[test]
    fn a_node_error_is_its_message_line_above_the_stack() {
        let log = "/app/node_modules/pg/lib/client.js:132\n      throw err\n      ^\n\nError: getaddrinfo ENOTFOUND postgres\n    at GetAddrInfoReqWrap.onlookup [as oncomplete] (node:dns:107:26) {\n  errno: -3008,\n";
        let found = read(log).expect("decisive");
        assert_eq!(found.ending, Ending::NodeError);
        assert_eq!(found.line, "Error: getaddrinfo ENOTFOUND postgres");
    }

    #[test]
    fn a_rust_panic_is_its_message_in_either_format() {
        assert_eq!(
            line_of(
                "thread 'main' panicked at src/main.rs:14:10:\nDATABASE_URL must be set: NotPresent\nnote: run with `RUST_BACKTRACE=1`\n"
            ),
            "DATABASE_URL must be set: NotPresent (at src/main.rs:14:10)"
        );
        assert_eq!(
            line_of(
                "thread 'main' panicked at 'called `Result::unwrap()` on an `Err` value', src/main.rs:4:5\n"
            ),
            "called `Result::unwrap()` on an `Err` value"
        );
    }

    #[test]
    fn a_dotnet_exception_is_read_from_its_innermost_exception() {
        let log = "Unhandled exception. System.InvalidOperationException: Unable to start host\n ---> System.Net.Sockets.SocketException (111): Connection refused\n   at System.Net.Sockets.Socket.Connect(EndPoint remoteEP)\n   --- End of inner exception stack trace ---\n   at Program.Main()\n";
        let found = read(log).expect("decisive");
        assert_eq!(found.ending, Ending::DotnetException);
        assert_eq!(found.line, "System.Net.Sockets.SocketException (111): Connection refused");
        assert_eq!(found.context.as_deref(), Some("System.InvalidOperationException: Unable to start host"));
    }

    #[test]
    fn the_shell_saying_it_cannot_run_a_program_is_decisive() {
        for (log, expected) in [
            (
                "exec /usr/local/bin/server: exec format error\n",
                "exec /usr/local/bin/server: exec format error",
            ),
            (
                "standard_init_linux.go:228: exec user process caused: exec format error\n",
                "standard_init_linux.go:228: exec user process caused: exec format error",
            ),
            ("/bin/sh: 1: ./start.sh: not found\n", "/bin/sh: 1: ./start.sh: not found"),
            (
                "/docker-entrypoint.sh: line 7: gosu: command not found\n",
                "/docker-entrypoint.sh: line 7: gosu: command not found",
            ),
            ("sh: ./run: Permission denied\n", "sh: ./run: Permission denied"),
        ] {
            let found = read(log).expect(log);
            assert_eq!((found.ending, found.line.as_str()), (Ending::Exec, expected));
        }
    }

    #[test]
    fn the_latest_ending_wins_over_an_earlier_retried_one() {
        let log = "Traceback (most recent call last):\n  File \"a.py\", line 1\nTimeoutError: retrying\npanic: cannot open /data/db: permission denied\n\ngoroutine 1 [running]:\n";
        assert_eq!(line_of(log), "cannot open /data/db: permission denied");
    }

    #[test]
    fn without_a_stack_the_last_error_line_is_decisive_and_a_clean_log_has_none() {
        assert_eq!(
            line_of("starting\nlevel=error msg=\"bind: address already in use\"\n"),
            "level=error msg=\"bind: address already in use\""
        );
        assert_eq!(read("starting\nlistening on :8080\n"), None);
        assert_eq!(read(""), None);
    }

    #[test]
    fn repeated_lines_are_counted_once_at_their_last_place() {
        let lines: Vec<String> = [
            "2026-12-06T07:00:01Z connecting to db:5432",
            "2026-12-06T07:00:01Z dial tcp 10.0.0.5:5432: connect: connection refused",
            "2026-12-06T07:00:02Z connecting to db:5432",
            "2026-12-06T07:00:02Z dial tcp 10.0.0.5:5432: connect: connection refused",
            "2026-12-06T07:00:03Z giving up",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            count_repeats(&lines),
            [
                "2026-12-06T07:00:02Z connecting to db:5432 (×2)",
                "2026-12-06T07:00:02Z dial tcp 10.0.0.5:5432: connect: connection refused (×2)",
                "2026-12-06T07:00:03Z giving up",
            ]
        );
    }

    #[test]
    fn hostile_logs_never_panic_the_reader() {
        for log in [
            "Traceback (most recent call last):",
            "\tat x\n",
            "Caused by: \n\tat a(A.java:1)\nCaused by: x",
            "thread 'x' panicked at ",
            " ---> ",
            "Unhandled exception. ",
            "panic: ",
            "\u{0}\u{ffff}\tat (a.js:1)",
        ] {
            let _ = read(log);
        }
    }
}
