//! What every campaign report shares: the machine it ran on, where reports are written, and the progress
//! line a scenario prints while it runs.

use std::{
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    time::Instant,
};

use serde_json::{Value, json};

/// The machine a run happened on: cores, memory, kernel, host name.
pub fn machine() -> Value {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:")).map(str::to_owned))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    json!({"cores": cores, "memory_gib": (memory_kib as f64 / 1024.0 / 1024.0).round(), "kernel": kernel, "host": host})
}

/// The machine in words, for a markdown report.
pub fn machine_line(machine: &Value) -> String {
    format!(
        "{} cores, {} GiB, Linux {} ({})",
        machine["cores"],
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["host"].as_str().unwrap_or("?")
    )
}

/// Writes `<dir>/<name>-<time>.json` and `.md`; returns the markdown path.
pub fn write(dir: &Path, name: &str, json: &Value, markdown: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    std::fs::write(dir.join(format!("{name}-{stamp}.json")), serde_json::to_vec_pretty(json)?)?;
    let path = dir.join(format!("{name}-{stamp}.md"));
    std::fs::write(&path, markdown)?;
    Ok(path)
}

/// A progress line: a bar on a terminal, a plain line every tenth otherwise.
pub struct Progress {
    what: &'static str,
    total: usize,
    started: Instant,
    terminal: bool,
    last_tenth: usize,
}

impl Progress {
    /// Progress over `total` steps of `what`.
    pub fn new(what: &'static str, total: usize) -> Self {
        Self {
            what,
            total: total.max(1),
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last_tenth: 0,
        }
    }

    /// `done` of the steps are done; `note` says what is going on.
    pub fn update(&mut self, done: usize, note: &str) {
        let elapsed = self.started.elapsed().as_secs();
        if self.terminal {
            let filled = done * 30 / self.total;
            let bar: String = "#".repeat(filled) + &".".repeat(30 - filled.min(30));
            let mut err = std::io::stderr();
            let _ = write!(err, "\r[{bar}] {done}/{} {} {elapsed:>4}s  {note:<40.40}", self.total, self.what);
            let _ = err.flush();
        } else {
            let tenth = done * 10 / self.total;
            if tenth > self.last_tenth || done == self.total {
                self.last_tenth = tenth;
                eprintln!("{done}/{} {} after {elapsed}s ({note})", self.total, self.what);
            }
        }
    }

    /// Ends the line.
    pub fn finish(&mut self) {
        if self.terminal {
            eprintln!();
        }
    }
}
