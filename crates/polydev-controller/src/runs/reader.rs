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
        self.cp.read_upto = self.cp.read_upto.max(seq.saturating_add(1));
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

    #[test]
    fn the_last_event_number_is_read_without_overflow() {
        let mut r = Reader::new(Normalizer::new(Provider::GeminiCli));
        r.feed(&json!({"seq": u64::MAX, "type": "stderr", "data": ""}));
        assert_eq!(r.checkpoint().read_upto, u64::MAX);
    }

    // Properties over arbitrary agent events (see `crate::fuzz`).

    use crate::fuzz::any_json;
    use base64::engine::general_purpose::STANDARD as B64;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A line a Gemini CLI might print, or not.
    fn cli_line() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,20}".prop_map(|t| {
                json!({"type": "message", "role": "assistant", "content": t, "delta": true})
                    .to_string()
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(i, o)| {
                let stats = json!({"input_tokens": i, "output_tokens": o});
                json!({"type": "result", "status": "success", "stats": stats}).to_string()
            }),
            "[ -~]{0,30}",
            Just(String::new()),
        ]
    }

    /// Stdout bytes: lines, the last perhaps unfinished, and stray bytes.
    fn stdout_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (vec(cli_line(), 0..4), any::<bool>()).prop_map(|(lines, end)| {
                let mut b = lines.join("\n").into_bytes();
                if end {
                    b.push(b'\n');
                }
                b
            }),
            vec(any::<u8>(), 0..64),
        ]
    }

    /// An event as a hostile agent might send it: mostly shaped like the
    /// agent's, with any field of any type, or any JSON at all.
    fn agent_event() -> impl Strategy<Value = Value> {
        let seq = prop_oneof![
            4 => (0u64..12).prop_map(Value::from),
            1 => prop::sample::select(vec![u64::MAX, u64::MAX - 1]).prop_map(Value::from),
            1 => any_json(),
        ];
        let kind = prop_oneof![
            4 => prop::sample::select(vec!["stdout", "stderr", "gap", "exit"])
                .prop_map(Value::from),
            1 => any_json(),
        ];
        let data = prop_oneof![
            4 => stdout_bytes().prop_map(|b| Value::from(B64.encode(b))),
            1 => "[A-Za-z0-9+/=]{0,12}".prop_map(Value::from),
            1 => any_json(),
        ];
        prop_oneof![
            4 => (seq, kind, data, any_json(), any_json()).prop_map(
                |(seq, kind, data, lost, code)| {
                    json!({"seq": seq, "type": kind, "data": data, "lost": lost, "exitCode": code})
                }
            ),
            1 => any_json(),
        ]
    }

    /// A well-formed process: its stdout cut into chunks anywhere, stderr
    /// between them, an exit at the end, numbered from 0.
    fn process() -> impl Strategy<Value = Vec<Value>> {
        (
            vec(cli_line(), 0..8),
            vec(1usize..40, 1..5),
            vec(proptest::option::weighted(0.2, "[ -~]{0,10}\n"), 1..5),
        )
            .prop_map(|(lines, sizes, errs)| {
                let out = lines.join("\n").into_bytes();
                let mut evs = Vec::new();
                let (mut at, mut i) = (0, 0);
                while at < out.len() {
                    let n = sizes[i % sizes.len()].min(out.len() - at);
                    evs.push(json!({"type": "stdout", "data": B64.encode(&out[at..at + n])}));
                    if let Some(e) = &errs[i % errs.len()] {
                        evs.push(json!({"type": "stderr", "data": B64.encode(e)}));
                    }
                    at += n;
                    i += 1;
                }
                evs.push(json!({"type": "exit", "exitCode": 0}));
                for (seq, e) in evs.iter_mut().enumerate() {
                    e["seq"] = seq.into();
                }
                evs
            })
    }

    fn events(steps: Vec<Step>) -> Vec<(Kind, Value)> {
        steps.into_iter().flat_map(|s| s.events).collect()
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(2048))]

        /// Any events: no panic, the reader's place only moves on, and its
        /// state stays bounded (the unfinished line under the cut, stderr's
        /// tail) and serializes.
        #[test]
        fn any_events_keep_the_reader_bounded(evs in vec(agent_event(), 0..12)) {
            let mut r = Reader::new(Normalizer::new(Provider::GeminiCli));
            for ev in &evs {
                let before = r.checkpoint().read_upto;
                r.feed(ev);
                // Read up to past this event, never back.
                let upto = r.checkpoint().read_upto;
                let past = ev["seq"].as_u64().map_or(0, |s| s.saturating_add(1));
                prop_assert!(upto >= before && upto >= past, "read_upto {} after {}", upto, ev);
                prop_assert!(r.partial.len() < MAX_LINE_BYTES);
                prop_assert!(r.stderr_tail().len() <= STDERR_TAIL_BYTES);
                let cp = serde_json::to_string(r.checkpoint()).unwrap();
                let back: Checkpoint = serde_json::from_str(&cp).unwrap();
                prop_assert_eq!(serde_json::to_string(&back).unwrap(), cp);
            }
        }

        /// A process read in one go, or stopped after any event before its
        /// exit and continued from the stored checkpoint, gives the same
        /// events and the same stderr: none lost or repeated.
        #[test]
        fn a_resumed_reader_loses_and_repeats_nothing(
            evs in process(),
            stop in any::<prop::sample::Index>(),
        ) {
            let mut whole = Reader::new(Normalizer::new(Provider::GeminiCli));
            let want = events(feed_all(&mut whole, &evs));
            if evs.len() < 2 {
                return Ok(());
            }
            let stop = stop.index(evs.len() - 1);
            let mut r = Reader::new(Normalizer::new(Provider::GeminiCli));
            let mut got = events(feed_all(&mut r, &evs[..=stop]));
            let cp = serde_json::to_string(r.checkpoint()).unwrap();
            let mut r = Reader::resume(serde_json::from_str(&cp).unwrap());
            let from = r.reconnect_from() as usize;
            got.extend(events(feed_all(&mut r, &evs[from..])));
            prop_assert_eq!(got, want);
            prop_assert_eq!(r.stderr_tail(), whole.stderr_tail());
        }
    }
}
