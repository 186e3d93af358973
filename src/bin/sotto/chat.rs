//! `sotto call --chat` and `--chat-json`: text messages from standard input, and what the
//! conversation reports, printed and logged as JSON lines.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sotto::messages::{ChatEvent, DisappearingTimer, MessageId, chat_event_json};
use sotto::text::Printable;
use tokio::sync::mpsc;

/// One line of input, understood.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A message to send.
    Text(String),
    /// `/timer ...`.
    Timer(DisappearingTimer),
    /// `/quit`.
    Quit,
    /// A command that did not parse; the reason is printed.
    Error(String),
}

/// Understands one line of standard input.
pub fn parse_line(line: &str) -> Option<Input> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return None;
    }
    if let Some(arg) = line.strip_prefix("/timer") {
        return Some(match DisappearingTimer::parse(arg) {
            Ok(t) => Input::Timer(t),
            Err(e) => Input::Error(e.to_string()),
        });
    }
    if line.trim() == "/quit" {
        return Some(Input::Quit);
    }
    Some(Input::Text(line.to_owned()))
}

/// Reads standard input on a thread of its own; lines arrive on the receiver, which closes at
/// the end of input. Lines over the message limit are still read whole (and refused later).
pub fn read_stdin() -> mpsc::UnboundedReceiver<Result<String, String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("sotto-chat-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            loop {
                let mut bytes = Vec::new();
                // A line far over the limit is cut at 64 KiB; the rest is read as more lines.
                match (&mut lock).take(64 * 1024).read_until(b'\n', &mut bytes) {
                    Ok(0) => break,
                    Ok(_) => {
                        if bytes.last() == Some(&b'\n') {
                            bytes.pop();
                        }
                        let line = String::from_utf8(bytes)
                            .map_err(|_| "message is not valid UTF-8".to_owned());
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("reading standard input: {e}")));
                        break;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("cannot read standard input: {e}");
    }
    rx
}

/// What the chat prints and logs.
pub struct ChatOutput {
    log: Option<ChatLog>,
    /// Timed messages not yet expired: their texts are blanked in the log at exit, since
    /// nothing will expire them afterwards.
    timed: HashSet<MessageId>,
}

impl ChatOutput {
    /// Prints to standard output and, with `--chat-json`, logs to `path`.
    pub fn new(path: Option<&Path>) -> Result<Self, String> {
        let log = path.map(ChatLog::create).transpose()?;
        Ok(ChatOutput {
            log,
            timed: HashSet::new(),
        })
    }

    /// An input error (oversize, bad `/timer`, not connected).
    pub fn error(&mut self, reason: &str) {
        println!("chat error: {}", Printable(reason));
        self.log(json!({"event": "error", "reason": reason}));
    }

    /// One event of the conversation.
    pub fn event(&mut self, event: &ChatEvent) {
        match event {
            ChatEvent::Message(m) => {
                let Some(text) = m.text.get() else { return };
                if m.ttl.secs().is_some() {
                    self.timed.insert(m.id);
                }
                let restored = if m.restored { " (from history)" } else { "" };
                println!(
                    "message from {}{restored}: {}{}",
                    Printable(&m.from),
                    Printable(&text),
                    lifetime(m.ttl)
                );
            }
            ChatEvent::Sent {
                id,
                text,
                ttl,
                restored,
            } => {
                let Some(text) = text.get() else { return };
                if ttl.secs().is_some() {
                    self.timed.insert(*id);
                }
                let restored = if *restored { " (from history)" } else { "" };
                println!(
                    "sent {id}{restored}: {}{}",
                    Printable(&text),
                    lifetime(*ttl)
                );
            }
            ChatEvent::Delivered { id, to } => println!("delivered {id} to {}", Printable(to)),
            ChatEvent::TimerChanged { from, ttl } => match ttl.ttl() {
                Some(_) => println!("{} set messages to disappear after {ttl}", Printable(from)),
                None => println!("{} turned disappearing messages off", Printable(from)),
            },
            ChatEvent::Expired { id } => {
                self.timed.remove(id);
                println!("expired {id}");
                if let Some(log) = &mut self.log {
                    log.blank(&[*id]);
                }
            }
            ChatEvent::Undelivered { id } => {
                println!("not delivered: {id} (the call ended before the peer acknowledged it)");
            }
            ChatEvent::Rejected(why) => println!("refused a message from the peer: {why}"),
            _ => {}
        }
        if let Some(line) = chat_event_json(event) {
            self.log(line);
        }
    }

    /// The call is over: texts of timed messages that have not expired are blanked in the
    /// log, since nothing expires them after this.
    pub fn finish(&mut self) {
        let ids: Vec<_> = self.timed.drain().collect();
        if let Some(log) = &mut self.log
            && !ids.is_empty()
        {
            log.blank(&ids);
        }
    }

    fn log(&mut self, line: Value) {
        if let Some(log) = &mut self.log {
            log.append(&line);
        }
    }
}

fn lifetime(ttl: DisappearingTimer) -> String {
    match ttl.ttl() {
        Some(_) => format!("   (disappears after {ttl})"),
        None => String::new(),
    }
}

/// The `--chat-json` file: appended line by line, rewritten to blank expired texts.
struct ChatLog {
    path: PathBuf,
    file: BufWriter<File>,
}

fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(!truncate)
        .write(true)
        .truncate(truncate)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl ChatLog {
    fn create(path: &Path) -> Result<Self, String> {
        let file =
            open_private(path, true).map_err(|e| format!("--chat-json {}: {e}", path.display()))?;
        Ok(ChatLog {
            path: path.to_owned(),
            file: BufWriter::new(file),
        })
    }

    fn append(&mut self, line: &Value) {
        let written = writeln!(self.file, "{line}").and_then(|()| self.file.flush());
        if let Err(e) = written {
            eprintln!("--chat-json {}: {e}", self.path.display());
        }
    }

    /// Rewrites the log with the text of messages `ids` replaced by null.
    fn blank(&mut self, ids: &[MessageId]) {
        let ids: HashSet<String> = ids.iter().map(MessageId::to_string).collect();
        let result = (|| -> std::io::Result<()> {
            self.file.flush()?;
            let old = std::fs::read_to_string(&self.path)?;
            let mut out = String::with_capacity(old.len());
            for line in old.lines() {
                match serde_json::from_str::<Value>(line) {
                    Ok(mut v)
                        if v["id"].as_str().is_some_and(|id| ids.contains(id))
                            && v.get("text").is_some() =>
                    {
                        v["text"] = Value::Null;
                        out.push_str(&v.to_string());
                    }
                    _ => out.push_str(line),
                }
                out.push('\n');
            }
            let tmp = self.path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = open_private(&tmp, true)?;
            f.write_all(out.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            self.file = BufWriter::new(open_private(&self.path, false)?);
            // The old text lived in `old` and `out`: wipe them.
            zeroize::Zeroize::zeroize(&mut out);
            let mut old = old;
            zeroize::Zeroize::zeroize(&mut old);
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("--chat-json {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_messages_timers_or_quit() {
        assert_eq!(parse_line("hello"), Some(Input::Text("hello".into())));
        assert_eq!(parse_line("hello\r"), Some(Input::Text("hello".into())));
        assert_eq!(parse_line("   "), None);
        assert_eq!(
            parse_line("/timer 30s"),
            Some(Input::Timer(DisappearingTimer::parse("30s").unwrap()))
        );
        assert_eq!(
            parse_line("/timer off"),
            Some(Input::Timer(DisappearingTimer::OFF))
        );
        assert!(matches!(parse_line("/timer 2s"), Some(Input::Error(e)) if e.contains("5 s")));
        assert!(matches!(parse_line("/timer 3d"), Some(Input::Error(_))));
        assert_eq!(parse_line("/quit"), Some(Input::Quit));
    }
}
