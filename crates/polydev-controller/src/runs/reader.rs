//! Reads a CLI's process events from the agent (`stdout`/`stderr` chunks in
//! base64, `gap`, `exit`, each numbered) and turns them into normalized run
//! events. Its state after each batch is a [`Checkpoint`]: where the next
//! unconsumed stdout line begins (agent event number and byte offset), what
//! stderr was already seen, and the normalizer's state. Stored with the
//! events in one transaction, it lets a restarted controller continue reading
//! exactly where the stored events stop, so none is lost or repeated.

use base64::Engine;
use polydev_runs::normalize::{Kind, Normalizer};
use serde_json::{json, Value};

/// A stdout line longer than this is cut and passed on as it is.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Stderr kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;

/// Where the reader stands.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The agent event holding the first byte of the next unconsumed line.
    pub line_seq: u64,
    /// Bytes of that event's stdout already consumed.
    pub line_offset: usize,
    /// Every agent event up to here (exclusive) was read.
    pub read_upto: u64,
    /// The normalizer's state.
    pub normalizer: Normalizer,
    /// The end of stderr.
    pub stderr_tail: String,
    /// Whether any output came yet.
    pub output_seen: bool,
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exit code, when it exited.
    pub code: Option<i64>,
    /// The signal that ended it.
    pub signal: Option<i64>,
    /// The agent's deadline killed it.
    pub timed_out: bool,
}

/// What one agent event produced.
#[derive(Debug, Default)]
pub struct Step {
    /// Normalized events (kind, data).
    pub events: Vec<(Kind, Value)>,
    /// The process ended.
    pub exit: Option<Exit>,
    /// This was the first output.
    pub first_output: bool,
}

/// The reader.
pub struct Reader {
    cp: Checkpoint,
    partial: Vec<u8>,
}

impl Reader {
    /// A reader for a new process.
    pub fn new(normalizer: Normalizer) -> Reader {
        Reader {
            cp: Checkpoint {
                line_seq: 0,
                line_offset: 0,
                read_upto: 0,
                normalizer,
                stderr_tail: String::new(),
                output_seen: false,
            },
            partial: Vec::new(),
        }
    }

    /// A reader continuing from a checkpoint.
    pub fn resume(cp: Checkpoint) -> Reader {
        Reader {
            cp,
            partial: Vec::new(),
        }
    }

    /// The agent event to ask for next after a (re)connection: the start of
    /// the unconsumed line, whose bytes are read again into the line buffer.
    pub fn reconnect_from(&mut self) -> u64 {
        self.partial.clear();
        self.cp.line_seq
    }

    /// The checkpoint after what was fed so far.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.cp
    }

    /// The normalizer (for the run's summary).
    pub fn normalizer(&self) -> &Normalizer {
        &self.cp.normalizer
    }

    /// The end of the CLI's stderr.
    pub fn stderr_tail(&self) -> &str {
        &self.cp.stderr_tail
    }

    /// Feeds one agent event (one NDJSON line of `/procs/:id/events`).
    pub fn feed(&mut self, ev: &Value) -> Step {
        let mut step = Step::default();
        let Some(seq) = ev["seq"].as_u64() else {
            return step;
        };
        let kind = ev["type"].as_str().unwrap_or("");
        match kind {
            "stdout" if seq >= self.cp.line_seq => {
                let data = decode(ev);
                let skip = if seq == self.cp.line_seq {
                    self.cp.line_offset.min(data.len())
                } else {
                    0
                };
                if !data.is_empty() && !self.cp.output_seen {
                    self.cp.output_seen = true;
                    step.first_output = true;
                }
                self.stdout(seq, skip, &data, &mut step.events);
            }
            "stderr" if seq >= self.cp.read_upto => {
                let data = decode(ev);
                if !data.is_empty() && !self.cp.output_seen {
                    self.cp.output_seen = true;
                    step.first_output = true;
                }
                self.push_stderr(&data);
            }
            "gap" if seq >= self.cp.read_upto => {
                let lost = ev["lost"].as_u64().unwrap_or(0);
                step.events.push((
                    Kind::Error,
                    json!({"message": format!("{lost} output events were dropped by the CLI VM's agent before they were read")}),
                ));
            }
            "exit" => {
                self.flush_partial(&mut step.events);
                step.exit = Some(Exit {
                    code: ev["exitCode"].as_i64(),
                    signal: ev["signal"].as_i64(),
                    timed_out: ev["timedOut"].as_bool().unwrap_or(false),
                });
            }
            _ => {}
        }
        self.cp.read_upto = self.cp.read_upto.max(seq + 1);
        step
    }

    fn stdout(&mut self, seq: u64, skip: usize, data: &[u8], out: &mut Vec<(Kind, Value)>) {
        let mut start = skip;
        while let Some(i) = data[start..].iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&data[start..start + i]);
            self.emit_line(out);
            start += i + 1;
            self.cp.line_seq = seq;
            self.cp.line_offset = start;
        }
        self.partial.extend_from_slice(&data[start..]);
        if self.partial.len() >= MAX_LINE_BYTES {
            self.emit_line(out);
            self.cp.line_seq = seq;
            self.cp.line_offset = data.len();
        } else if self.partial.is_empty() {
            self.cp.line_seq = seq;
            self.cp.line_offset = data.len();
        }
    }

    fn emit_line(&mut self, out: &mut Vec<(Kind, Value)>) {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        for e in self.cp.normalizer.line(&line) {
            out.push((e.kind, e.data));
        }
    }

    fn flush_partial(&mut self, out: &mut Vec<(Kind, Value)>) {
        if !self.partial.is_empty() {
            self.emit_line(out);
        }
    }

    fn push_stderr(&mut self, data: &[u8]) {
        self.cp.stderr_tail.push_str(&String::from_utf8_lossy(data));
        let len = self.cp.stderr_tail.len();
        if len > STDERR_TAIL_BYTES {
            let mut cut = len - STDERR_TAIL_BYTES;
            while !self.cp.stderr_tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.cp.stderr_tail.drain(..cut);
        }
    }
}

fn decode(ev: &Value) -> Vec<u8> {
    ev["data"]
        .as_str()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use polydev_core::auth::Provider;

    fn out(seq: u64, s: &str) -> Value {
        json!({"seq": seq, "type": "stdout", "data": base64::engine::general_purpose::STANDARD.encode(s)})
    }

    fn texts(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .flat_map(|s| s.events.iter())
            .filter(|(k, _)| *k == Kind::Text)
            .map(|(_, d)| d["text"].as_str().unwrap_or("").to_string())
            .collect()
    }

    const A: &str = r#"{"type":"message","role":"assistant","content":"one ","delta":true}"#;
    const B: &str = r#"{"type":"message","role":"assistant","content":"two","delta":true}"#;

    fn feed_all(r: &mut Reader, evs: &[Value]) -> Vec<Step> {
        evs.iter().map(|e| r.feed(e)).collect()
    }

    #[test]
    fn lines_split_across_events_and_resumed_from_any_checkpoint() {
        let line_a = format!("{A}\n");
        let (a1, a2) = line_a.split_at(20);
        let evs = vec![
            out(0, a1),
            json!({"seq": 1, "type": "stderr", "data": base64::engine::general_purpose::STANDARD.encode("warn\n")}),
            out(2, &format!("{a2}{B}")),
            out(3, "\n"),
            json!({"seq": 4, "type": "exit", "exitCode": 0}),
        ];
        let mut whole = Reader::new(Normalizer::new(Provider::GeminiCli));
        let all = feed_all(&mut whole, &evs);
        assert_eq!(texts(&all), ["one ", "two"]);
        assert!(all[0].first_output && !all[2].first_output);
        assert_eq!(all[4].exit.as_ref().map(|e| e.code), Some(Some(0)));
        // Stop after each event, keep only the checkpoint, reconnect: the
        // same events come out, none lost or repeated.
        for stop in 0..evs.len() {
            let mut r = Reader::new(Normalizer::new(Provider::GeminiCli));
            let first = feed_all(&mut r, &evs[..=stop]);
            let cp = serde_json::to_string(r.checkpoint()).unwrap();
            let mut r2 = Reader::resume(serde_json::from_str(&cp).unwrap());
            let from = r2.reconnect_from() as usize;
            let rest = feed_all(&mut r2, &evs[from..]);
            let mut got = texts(&first);
            got.extend(texts(&rest));
            assert_eq!(got, ["one ", "two"], "stopped after event {stop}");
            assert_eq!(
                r2.stderr_tail(),
                "warn\n",
                "stderr once, stopped after {stop}"
            );
        }
    }

    #[test]
    fn a_last_line_without_newline_is_read_at_exit_and_long_lines_are_cut() {
        let mut r = Reader::new(Normalizer::new(Provider::GeminiCli));
        let s = r.feed(&out(0, A));
        assert!(s.events.is_empty());
        let s = r.feed(&json!({"seq": 1, "type": "exit", "exitCode": 1}));
        assert_eq!(texts(&[s]), ["one "]);
        let mut r = Reader::new(Normalizer::new(Provider::GeminiCli));
        let big = "x".repeat(MAX_LINE_BYTES + 10);
        let s = r.feed(&out(0, &big));
        assert_eq!(s.events.len(), 1, "cut and passed on as a status line");
    }
}
