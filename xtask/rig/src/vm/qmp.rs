//! A minimal QMP client: stop/cont, HMP passthrough, and snapshot save/restore by migration
//! to a file (the recipe in `../shared/RECIPES.md`: `migrate` to `file:`, then a new QEMU with
//! `-incoming defer` and `migrate-incoming`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `path` and leaves capability negotiation.
    pub fn connect(path: &Path) -> Result<Qmp> {
        // QEMU binds the socket (the file appears) a moment before it listens; a connect in
        // between is refused. Seen under load right after starting a restored QEMU.
        let start = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && start.elapsed() < Duration::from_secs(5) =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => {
                    break r
                        .with_context(|| format!("connect to the QMP socket {}", path.display()))?
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        };
        let mut greeting = String::new();
        q.reader.read_line(&mut greeting)?;
        if !greeting.contains("QMP") {
            bail!("{}: not a QMP greeting: {greeting}", path.display());
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// Runs a command and returns its `return` value; events in between are skipped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let msg = json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}")?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("QMP closed the connection during `{command}`");
            }
            let v: Value = serde_json::from_str(&line)
                .with_context(|| format!("QMP answer to `{command}`: {line}"))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP `{command}` failed: {e}");
            }
        }
    }

    /// Runs a human-monitor command (`info registers -a`, say) and returns its text.
    pub fn hmp(&mut self, line: &str) -> Result<String> {
        let r = self.execute("human-monitor-command", json!({"command-line": line}))?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }

    /// Pauses every vCPU.
    pub fn stop(&mut self) -> Result<()> {
        self.execute("stop", json!({})).map(drop)
    }

    /// Resumes the vCPUs.
    pub fn cont(&mut self) -> Result<()> {
        self.execute("cont", json!({})).map(drop)
    }

    /// Stops the VM and saves it to `file`; returns when the stream is complete.
    pub fn save(&mut self, file: &Path) -> Result<()> {
        self.stop()?;
        self.execute(
            "migrate",
            json!({"uri": format!("file:{}", file.display())}),
        )?;
        self.wait_migration("save")
    }

    /// Loads `file` into a QEMU started with `-incoming defer`, then resumes it.
    pub fn restore(&mut self, file: &Path) -> Result<()> {
        self.execute(
            "migrate-incoming",
            json!({"uri": format!("file:{}", file.display())}),
        )?;
        self.wait_migration("restore")?;
        self.cont()
    }

    fn wait_migration(&mut self, what: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            let r = self.execute("query-migrate", json!({}))?;
            match r.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => bail!("snapshot {what} failed: {r}"),
                _ if start.elapsed() > Duration::from_secs(120) => {
                    bail!("snapshot {what} not done after 120 s: {r}")
                }
                // The incoming side reports nothing until it starts; once it has
                // loaded, the VM is paused in "postmigrate"/"paused" state.
                None if what == "restore" => {
                    let st = self.execute("query-status", json!({}))?;
                    if st.get("status").and_then(Value::as_str) == Some("paused") {
                        return Ok(());
                    }
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Splits `info registers -a` output into (CPU index, register text) pairs.
pub fn registers_by_cpu(text: &str) -> Vec<(u32, String)> {
    text.split("CPU#")
        .skip(1)
        .filter_map(|part| {
            let (n, rest) = part.split_once(char::is_whitespace)?;
            Some((n.trim().parse().ok()?, rest.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_registers_per_cpu() {
        let t = "\nCPU#0\n PC=1 X00=2\n\nCPU#1\n PC=3 X00=0\n";
        let r = super::registers_by_cpu(t);
        assert_eq!(r, [(0, "PC=1 X00=2".into()), (1, "PC=3 X00=0".into())]);
    }
}
