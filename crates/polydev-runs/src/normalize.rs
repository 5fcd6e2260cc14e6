//! One event stream for the three CLIs. Each line a CLI prints on stdout
//! becomes zero or more events of six kinds — `status`, `text`, `tool_use`,
//! `tool_result`, `error`, `result` — each carrying the CLI's raw line
//! (`raw`). The normalizer also keeps what a run's record needs: the
//! conversation id, the final answer, errors and usage.
//!
//! What each CLI prints (pinned versions, see [`crate::command`]):
//! - Claude Code (`stream-json --verbose`): `system/init` (session_id),
//!   `assistant` (content blocks: `text`, `tool_use`), `user` (`tool_result`
//!   blocks), `result` (`is_error`, `result`, `total_cost_usd` and `usage`,
//!   cumulative over the conversation).
//! - Codex (`exec --json`): `thread.started` (thread_id), `turn.started`,
//!   `item.started|updated|completed` (`agent_message`, `command_execution`,
//!   `reasoning`, …), `turn.completed` (usage, cumulative per thread),
//!   `turn.failed`, `error`.
//! - Gemini CLI (`stream-json`): `init` (session_id), `message` (assistant
//!   text with `delta: true`), `tool_use`, `tool_result`, `error`, `result`
//!   (`status`, `stats` for this run).

use polydev_core::auth::Provider;
use serde_json::{json, Value};

/// The longest answer kept from a CLI's text deltas (Gemini's); text past
/// it still comes out as events.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Kinds of normalized events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Progress: started, a turn began, a line that is not an event, ….
    Status,
    /// Answer text, in the order produced.
    Text,
    /// The CLI calls a tool (a shell command, an edit, …).
    ToolUse,
    /// A tool's output.
    ToolResult,
    /// Something failed.
    Error,
    /// The run's outcome.
    Result,
}

impl Kind {
    /// The event name (SSE `event:` field).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Text => "text",
            Kind::ToolUse => "tool_use",
            Kind::ToolResult => "tool_result",
            Kind::Error => "error",
            Kind::Result => "result",
        }
    }
}

/// A normalized event: its kind and data (with the raw line under `raw`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Kind.
    pub kind: Kind,
    /// Data, `raw` included.
    pub data: Value,
}

/// Tokens and cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Input tokens (cached ones included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost in US dollars, when the CLI says.
    pub cost_usd: Option<f64>,
}

impl Usage {
    fn minus(self, before: Usage) -> Usage {
        // A smaller total means another conversation: this run's own figures.
        if self.input_tokens < before.input_tokens || self.output_tokens < before.output_tokens {
            return self;
        }
        Usage {
            input_tokens: self.input_tokens - before.input_tokens,
            output_tokens: self.output_tokens - before.output_tokens,
            cost_usd: match (self.cost_usd, before.cost_usd) {
                (Some(a), Some(b)) if a >= b => Some(a - b),
                (a, _) => a,
            },
        }
    }
}

/// What a run ended with.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The CLI's conversation id (continue with it).
    pub conversation_id: Option<String>,
    /// The final answer.
    pub answer: Option<String>,
    /// This run's usage.
    pub usage: Option<Usage>,
    /// The conversation's totals as the CLI reported them (the next run's
    /// `before`).
    pub totals: Option<Usage>,
    /// The CLI reported failure.
    pub is_error: bool,
    /// Its last error message.
    pub error: Option<String>,
}

/// Turns one CLI's lines into events. Its state serializes, so a run's
/// reader can stop and continue (after a controller restart) where it was.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Normalizer {
    provider: Provider,
    conversation_id: Option<String>,
    answer: Option<String>,
    gemini_text: String,
    totals: Option<Usage>,
    is_error: bool,
    error: Option<String>,
}

fn ev(kind: Kind, mut data: Value, raw: &Value) -> Event {
    data["raw"] = raw.clone();
    Event { kind, data }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.get("text").and_then(|t| t.as_str()).map(str::to_string))
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The longest start of `s` of at most `max` bytes that ends on a
/// character boundary.
fn prefix_within(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(|x| x.as_u64()).unwrap_or(0)
}

impl Normalizer {
    /// A normalizer for `provider`'s output.
    pub fn new(provider: Provider) -> Normalizer {
        Normalizer {
            provider,
            conversation_id: None,
            answer: None,
            gemini_text: String::new(),
            totals: None,
            is_error: false,
            error: None,
        }
    }

    /// The events of one line of the CLI's stdout.
    pub fn line(&mut self, line: &str) -> Vec<Event> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return Vec::new();
        }
        let raw: Value = match serde_json::from_str(line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let raw = Value::String(line.to_string());
                return vec![ev(
                    Kind::Status,
                    json!({"phase": "output", "text": line}),
                    &raw,
                )];
            }
        };
        match self.provider {
            Provider::ClaudeCode => self.claude(&raw),
            Provider::Codex => self.codex(&raw),
            Provider::GeminiCli => self.gemini(&raw),
        }
    }

    fn fail(&mut self, msg: String) {
        self.is_error = true;
        self.error = Some(msg);
    }

    fn claude(&mut self, raw: &Value) -> Vec<Event> {
        let t = raw["type"].as_str().unwrap_or("");
        if let Some(s) = raw["session_id"].as_str() {
            self.conversation_id = Some(s.to_string());
        }
        match t {
            "system" => vec![ev(
                Kind::Status,
                json!({"phase": raw["subtype"].as_str().unwrap_or("system"), "conversationId": self.conversation_id, "model": raw["model"]}),
                raw,
            )],
            // An API failure Claude Code shows as an assistant message.
            "assistant" if raw["error"].is_string() || raw["is_api_error_message"] == true => {
                let m = text_of(&raw["message"]["content"]);
                let m = if m.is_empty() {
                    raw["error"].as_str().unwrap_or("API error").to_string()
                } else {
                    m
                };
                self.fail(m.clone());
                vec![ev(Kind::Error, json!({"message": m}), raw)]
            }
            "assistant" | "user" => {
                let mut out = Vec::new();
                for b in raw["message"]["content"].as_array().into_iter().flatten() {
                    match b["type"].as_str() {
                        Some("text") => out.push(ev(Kind::Text, json!({"text": b["text"]}), raw)),
                        Some("tool_use") => out.push(ev(
                            Kind::ToolUse,
                            json!({"id": b["id"], "name": b["name"], "input": b["input"]}),
                            raw,
                        )),
                        Some("tool_result") => out.push(ev(
                            Kind::ToolResult,
                            json!({"id": b["tool_use_id"], "output": text_of(&b["content"]), "isError": b["is_error"].as_bool().unwrap_or(false)}),
                            raw,
                        )),
                        _ => {}
                    }
                }
                out
            }
            "result" => {
                let usage = &raw["usage"];
                let totals = Usage {
                    input_tokens: u(usage, "input_tokens")
                        .saturating_add(u(usage, "cache_creation_input_tokens"))
                        .saturating_add(u(usage, "cache_read_input_tokens")),
                    output_tokens: u(usage, "output_tokens"),
                    cost_usd: raw["total_cost_usd"].as_f64(),
                };
                self.totals = Some(totals);
                if let Some(r) = raw["result"].as_str() {
                    self.answer = Some(r.to_string());
                }
                let is_error = raw["is_error"].as_bool().unwrap_or(false);
                if is_error {
                    let msg = raw["result"]
                        .as_str()
                        .unwrap_or("the CLI reported an error")
                        .to_string();
                    self.fail(msg);
                }
                vec![ev(
                    Kind::Result,
                    json!({"isError": is_error, "answer": self.answer, "conversationId": self.conversation_id}),
                    raw,
                )]
            }
            _ => vec![ev(Kind::Status, json!({"phase": t}), raw)],
        }
    }

    fn codex(&mut self, raw: &Value) -> Vec<Event> {
        let t = raw["type"].as_str().unwrap_or("");
        match t {
            "thread.started" => {
                self.conversation_id = raw["thread_id"].as_str().map(str::to_string);
                vec![ev(
                    Kind::Status,
                    json!({"phase": "started", "conversationId": self.conversation_id}),
                    raw,
                )]
            }
            "item.started" | "item.updated" | "item.completed" => {
                let item = &raw["item"];
                let done = t == "item.completed";
                match item["type"].as_str().unwrap_or("") {
                    "agent_message" if done => {
                        let text = item["text"].as_str().unwrap_or("").to_string();
                        self.answer = Some(text.clone());
                        vec![ev(Kind::Text, json!({"text": text}), raw)]
                    }
                    "command_execution" if t == "item.started" => vec![ev(
                        Kind::ToolUse,
                        json!({"id": item["id"], "name": "shell", "input": {"command": item["command"]}}),
                        raw,
                    )],
                    "command_execution" if done => vec![ev(
                        Kind::ToolResult,
                        json!({"id": item["id"], "output": item["aggregated_output"], "exitCode": item["exit_code"], "isError": item["exit_code"].as_i64().is_some_and(|c| c != 0)}),
                        raw,
                    )],
                    // A transport notice ("Falling back from WebSockets…"),
                    // not the run's failure: `turn.failed` says that.
                    "error" => {
                        let m = item["message"].as_str().unwrap_or("error").to_string();
                        vec![ev(
                            Kind::Status,
                            json!({"phase": "notice", "message": m}),
                            raw,
                        )]
                    }
                    other => vec![ev(Kind::Status, json!({"phase": t, "item": other}), raw)],
                }
            }
            "turn.completed" => {
                // Errors before a completed turn were retries it got past.
                self.is_error = false;
                self.error = None;
                let usage = &raw["usage"];
                self.totals = Some(Usage {
                    input_tokens: u(usage, "input_tokens"),
                    output_tokens: u(usage, "output_tokens"),
                    cost_usd: None,
                });
                vec![ev(
                    Kind::Result,
                    json!({"isError": self.is_error, "answer": self.answer, "conversationId": self.conversation_id}),
                    raw,
                )]
            }
            "error"
                if raw["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Reconnecting")) =>
            {
                vec![ev(
                    Kind::Status,
                    json!({"phase": "reconnecting", "message": raw["message"]}),
                    raw,
                )]
            }
            "turn.failed" | "error" => {
                let m = raw["error"]["message"]
                    .as_str()
                    .or_else(|| raw["message"].as_str())
                    .unwrap_or("the CLI reported an error")
                    .to_string();
                self.fail(m.clone());
                vec![ev(Kind::Error, json!({"message": m}), raw)]
            }
            _ => vec![ev(Kind::Status, json!({"phase": t}), raw)],
        }
    }

    fn gemini(&mut self, raw: &Value) -> Vec<Event> {
        let t = raw["type"].as_str().unwrap_or("");
        match t {
            "init" => {
                self.conversation_id = raw["session_id"].as_str().map(str::to_string);
                vec![ev(
                    Kind::Status,
                    json!({"phase": "started", "conversationId": self.conversation_id, "model": raw["model"]}),
                    raw,
                )]
            }
            "message" if raw["role"] == "assistant" => {
                let text = text_of(&raw["content"]);
                let room = MAX_ANSWER_BYTES.saturating_sub(self.gemini_text.len());
                self.gemini_text.push_str(prefix_within(&text, room));
                self.answer = Some(self.gemini_text.clone());
                vec![ev(Kind::Text, json!({"text": text}), raw)]
            }
            "message" => vec![ev(
                Kind::Status,
                json!({"phase": "message", "role": raw["role"]}),
                raw,
            )],
            "tool_use" => vec![ev(
                Kind::ToolUse,
                json!({"id": raw["tool_id"], "name": raw["tool_name"], "input": raw["parameters"]}),
                raw,
            )],
            "tool_result" => vec![ev(
                Kind::ToolResult,
                json!({"id": raw["tool_id"], "output": text_of(&raw["output"]), "isError": raw["status"].as_str().is_some_and(|s| s != "success")}),
                raw,
            )],
            "error" => {
                let m = raw["message"]
                    .as_str()
                    .unwrap_or("the CLI reported an error")
                    .to_string();
                self.fail(m.clone());
                vec![ev(Kind::Error, json!({"message": m}), raw)]
            }
            "result" => {
                let st = &raw["stats"];
                self.totals = Some(Usage {
                    input_tokens: u(st, "input_tokens"),
                    output_tokens: u(st, "output_tokens"),
                    cost_usd: None,
                });
                let ok = raw["status"].as_str() == Some("success");
                if !ok {
                    let m = raw["error"]["message"]
                        .as_str()
                        .unwrap_or("the run did not succeed")
                        .to_string();
                    self.fail(m);
                }
                vec![ev(
                    Kind::Result,
                    json!({"isError": !ok, "answer": self.answer, "conversationId": self.conversation_id}),
                    raw,
                )]
            }
            _ => vec![ev(Kind::Status, json!({"phase": t}), raw)],
        }
    }

    /// The run's summary; `before` is the conversation's totals after the
    /// previous run. Codex's tokens and Claude's cost are cumulative over a
    /// conversation (this run's share is the difference); Claude's tokens
    /// and Gemini's figures are per run.
    pub fn summary(&self, before: Option<Usage>) -> Summary {
        let usage = self.totals.map(|t| match (self.provider, before) {
            (Provider::GeminiCli, _) | (_, None) => t,
            // Claude's tokens are this run's; its cost is the session's.
            (Provider::ClaudeCode, Some(b)) => Usage {
                cost_usd: match (t.cost_usd, b.cost_usd) {
                    (Some(a), Some(b)) if a >= b => Some(a - b),
                    (a, _) => a,
                },
                ..t
            },
            (Provider::Codex, Some(b)) => t.minus(b),
        });
        Summary {
            conversation_id: self.conversation_id.clone(),
            answer: self.answer.clone(),
            usage,
            totals: self.totals,
            is_error: self.is_error,
            error: self.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: Provider, lines: &[&str]) -> (Vec<Event>, Normalizer) {
        let mut n = Normalizer::new(p);
        let evs = lines.iter().flat_map(|l| n.line(l)).collect();
        (evs, n)
    }

    fn kinds(e: &[Event]) -> Vec<&'static str> {
        e.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn claude_stream_json() {
        let (e, n) = run(
            Provider::ClaudeCode,
            &[
                r#"{"type":"system","subtype":"init","session_id":"s-1","model":"claude-x","tools":["Bash"]}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"ls"}}]},"session_id":"s-1"}"#,
                r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"a.txt\n","is_error":false}]},"session_id":"s-1"}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"One file."}]},"session_id":"s-1"}"#,
                r#"{"type":"result","subtype":"success","is_error":false,"result":"One file.","total_cost_usd":0.03,"usage":{"input_tokens":100,"cache_read_input_tokens":20,"output_tokens":30},"session_id":"s-1"}"#,
            ],
        );
        assert_eq!(
            kinds(&e),
            [
                "status",
                "text",
                "tool_use",
                "tool_result",
                "text",
                "result"
            ]
        );
        assert_eq!(e[2].data["input"]["command"], "ls");
        assert_eq!(e[3].data["output"], "a.txt\n");
        assert_eq!(e[1].data["raw"]["type"], "assistant");
        let s = n.summary(Some(Usage {
            input_tokens: 50,
            output_tokens: 10,
            cost_usd: Some(0.01),
        }));
        assert_eq!(s.conversation_id.as_deref(), Some("s-1"));
        assert_eq!(s.answer.as_deref(), Some("One file."));
        let u = s.usage.unwrap();
        // Tokens as reported (this run's), cost minus the session's before.
        assert_eq!((u.input_tokens, u.output_tokens), (120, 30));
        assert!((u.cost_usd.unwrap() - 0.02).abs() < 1e-9);
        assert!(!s.is_error);
    }

    #[test]
    fn codex_transport_notices_do_not_fail_a_completed_turn() {
        let (e, n) = run(
            Provider::Codex,
            &[
                r#"{"type":"thread.started","thread_id":"t-1"}"#,
                r#"{"type":"error","message":"Reconnecting... 1/5 (stream disconnected)"}"#,
                r#"{"type":"item.completed","item":{"id":"i0","type":"error","message":"Falling back from WebSockets to HTTPS transport."}}"#,
                r#"{"type":"item.completed","item":{"id":"i1","type":"agent_message","text":"hi"}}"#,
                r#"{"type":"turn.completed","usage":{"input_tokens":10,"output_tokens":5}}"#,
            ],
        );
        assert!(!kinds(&e).contains(&"error"), "{:?}", kinds(&e));
        assert!(!n.summary(None).is_error);
    }

    #[test]
    fn claude_api_error_message_is_an_error_not_the_answer() {
        let (e, n) = run(
            Provider::ClaudeCode,
            &[
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Invalid API key · Fix external API key"}]},"error":"authentication_failed","is_api_error_message":true}"#,
            ],
        );
        assert_eq!(kinds(&e), ["error"]);
        assert!(n.summary(None).is_error && n.summary(None).answer.is_none());
    }

    #[test]
    fn claude_offline_failure() {
        let (_, n) = run(
            Provider::ClaudeCode,
            &[
                r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: Connection error.","total_cost_usd":0,"usage":{},"session_id":"s-2"}"#,
            ],
        );
        let s = n.summary(None);
        assert!(s.is_error && s.error.unwrap().contains("Connection error"));
    }

    #[test]
    fn codex_exec_json() {
        let (e, n) = run(
            Provider::Codex,
            &[
                r#"{"type":"thread.started","thread_id":"th-1"}"#,
                r#"{"type":"turn.started"}"#,
                r#"{"type":"item.started","item":{"id":"item_0","type":"command_execution","command":"bash -lc ls","aggregated_output":"","exit_code":null,"status":"in_progress"}}"#,
                r#"{"type":"item.completed","item":{"id":"item_0","type":"command_execution","command":"bash -lc ls","aggregated_output":"a.txt\n","exit_code":0,"status":"completed"}}"#,
                r#"{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"One file."}}"#,
                r#"{"type":"turn.completed","usage":{"input_tokens":900,"cached_input_tokens":100,"output_tokens":40}}"#,
                "warning: not json",
            ],
        );
        assert_eq!(
            kinds(&e),
            [
                "status",
                "status",
                "tool_use",
                "tool_result",
                "text",
                "result",
                "status"
            ]
        );
        let s = n.summary(Some(Usage {
            input_tokens: 400,
            output_tokens: 15,
            cost_usd: None,
        }));
        assert_eq!(s.conversation_id.as_deref(), Some("th-1"));
        assert_eq!(s.usage.unwrap().input_tokens, 500);
        assert_eq!(s.usage.unwrap().output_tokens, 25);
        assert_eq!(s.totals.unwrap().input_tokens, 900);
        let (e, n) = run(
            Provider::Codex,
            &[r#"{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized"}}"#],
        );
        assert_eq!(kinds(&e), ["error"]);
        assert!(n.summary(None).error.unwrap().contains("401"));
    }

    #[test]
    fn gemini_stream_json() {
        let (e, n) = run(
            Provider::GeminiCli,
            &[
                r#"{"type":"init","timestamp":"t","session_id":"g-1","model":"gemini-x"}"#,
                r#"{"type":"message","role":"user","content":"list"}"#,
                r#"{"type":"message","role":"assistant","content":"Let me ","delta":true}"#,
                r#"{"type":"tool_use","tool_name":"run_shell_command","tool_id":"t1","parameters":{"command":"ls"}}"#,
                r#"{"type":"tool_result","tool_id":"t1","status":"success","output":"a.txt"}"#,
                r#"{"type":"message","role":"assistant","content":"see: a.txt","delta":true}"#,
                r#"{"type":"result","status":"success","stats":{"total_tokens":60,"input_tokens":50,"output_tokens":10,"duration_ms":5,"tool_calls":1}}"#,
            ],
        );
        assert_eq!(
            kinds(&e),
            [
                "status",
                "status",
                "text",
                "tool_use",
                "tool_result",
                "text",
                "result"
            ]
        );
        let s = n.summary(Some(Usage {
            input_tokens: 1000,
            output_tokens: 1000,
            cost_usd: None,
        }));
        assert_eq!(s.answer.as_deref(), Some("Let me see: a.txt"));
        assert_eq!(
            s.usage.unwrap().input_tokens,
            50,
            "Gemini's figures are per run"
        );
        assert_eq!(s.conversation_id.as_deref(), Some("g-1"));
    }

    // Properties over arbitrary CLI output. Each runs a bounded number of
    // cases under `cargo test`, `POLYDEV_FUZZ_CASES=N` when set, from a fixed
    // seed unless `PROPTEST_RNG_SEED` names another.

    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn config(default: u32) -> Config {
        let cases = match std::env::var("POLYDEV_FUZZ_CASES") {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("POLYDEV_FUZZ_CASES={v:?} is not a whole number")),
            _ => default,
        };
        let mut c = Config::with_cases(cases);
        if c.rng_seed == RngSeed::Random {
            c.rng_seed = RngSeed::Fixed(0x0070_6f6c_7964_6576);
        }
        c
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..3).prop_map(Value::from),
                btree_map("[a-z_]{1,8}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An object with the keys `keys` (each perhaps missing) and values of
    /// `value` or anything.
    fn object(
        keys: &[&'static str],
        value: impl Strategy<Value = Value> + Clone + 'static,
    ) -> BoxedStrategy<Value> {
        let fields: Vec<_> = keys
            .iter()
            .map(|&k| {
                proptest::option::weighted(0.7, prop_oneof![4 => value.clone(), 1 => any_json()])
                    .prop_map(move |v| v.map(|v| (k.to_string(), v)))
            })
            .collect();
        fields
            .prop_map(|f| Value::Object(f.into_iter().flatten().collect()))
            .boxed()
    }

    /// A line shaped like one of the three CLIs' events, with any field
    /// missing or of another type and counts up to `u64::MAX`.
    fn cli_object() -> impl Strategy<Value = Value> {
        let word = |w: Vec<&'static str>| prop::sample::select(w).prop_map(Value::from);
        let count = prop_oneof![(0u64..1000), Just(u64::MAX), any::<u64>()].prop_map(Value::from);
        let text = ".{0,16}".prop_map(Value::from);
        let usage = object(
            &[
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens",
            ],
            count,
        );
        let block = (
            word(vec!["text", "tool_use", "tool_result"]),
            object(
                &[
                    "text",
                    "id",
                    "name",
                    "input",
                    "tool_use_id",
                    "content",
                    "is_error",
                ],
                text.clone(),
            ),
        )
            .prop_map(|(t, mut b)| {
                b["type"] = t;
                b
            });
        let content = prop_oneof![vec(block, 0..3).prop_map(Value::from), text.clone()];
        let item = (
            word(vec![
                "agent_message",
                "command_execution",
                "error",
                "reasoning",
            ]),
            object(
                &[
                    "id",
                    "text",
                    "command",
                    "aggregated_output",
                    "exit_code",
                    "message",
                ],
                text.clone(),
            ),
        )
            .prop_map(|(t, mut i)| {
                i["type"] = t;
                i
            });
        let kind = word(vec![
            "system",
            "assistant",
            "user",
            "result",
            "thread.started",
            "turn.started",
            "item.started",
            "item.updated",
            "item.completed",
            "turn.completed",
            "turn.failed",
            "error",
            "init",
            "message",
            "tool_use",
            "tool_result",
        ]);
        (
            kind,
            object(
                &[
                    "session_id",
                    "thread_id",
                    "subtype",
                    "model",
                    "result",
                    "message",
                    "tool_id",
                    "tool_name",
                ],
                text.clone(),
            ),
            object(
                &["role", "status"],
                word(vec!["assistant", "user", "success", "error"]),
            ),
            proptest::option::of(usage.clone()),
            proptest::option::of(usage),
            proptest::option::of(content.clone()),
            proptest::option::of(content),
            proptest::option::of(item),
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(
                |(kind, mut o, words, usage, stats, message, content, item, cost, is_error)| {
                    o["type"] = kind;
                    for (k, v) in words.as_object().into_iter().flatten() {
                        o[k] = v.clone();
                    }
                    let put = |o: &mut Value, k: &str, v: Option<Value>| {
                        if let Some(v) = v {
                            o[k] = v;
                        }
                    };
                    put(&mut o, "usage", usage);
                    put(&mut o, "stats", stats);
                    put(&mut o, "content", content);
                    put(&mut o, "item", item);
                    put(&mut o, "total_cost_usd", cost.map(Value::from));
                    put(&mut o, "is_error", is_error.map(Value::from));
                    if let Some(m) = message {
                        o["message"] = json!({"content": m});
                    }
                    o
                },
            )
    }

    fn provider() -> impl Strategy<Value = Provider> {
        prop::sample::select(vec![
            Provider::ClaudeCode,
            Provider::Codex,
            Provider::GeminiCli,
        ])
    }

    fn usage() -> impl Strategy<Value = Usage> {
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<f64>()),
        )
            .prop_map(|(i, o, c)| Usage {
                input_tokens: i,
                output_tokens: o,
                cost_usd: c,
            })
    }

    /// The normalizer's state holds no more than one line's worth in each
    /// field, the answer no more than [`MAX_ANSWER_BYTES`].
    fn check_bounded(n: &Normalizer, longest: usize) -> Result<(), TestCaseError> {
        let within = |s: &Option<String>| s.as_ref().map_or(0, String::len) <= longest.max(64);
        prop_assert!(within(&n.conversation_id) && within(&n.error));
        prop_assert!(n.gemini_text.len() <= MAX_ANSWER_BYTES);
        prop_assert!(n.answer.as_ref().map_or(0, String::len) <= longest.max(MAX_ANSWER_BYTES));
        Ok(())
    }

    proptest! {
        #![proptest_config(config(2048))]

        /// Any lines from any CLI: no panic, at most one event per byte,
        /// bounded state, a summary for any earlier totals.
        #[test]
        fn any_output_is_normalized_within_bounds(
            p in provider(),
            lines in vec(prop_oneof![
                4 => cli_object().prop_map(|v| v.to_string()),
                1 => any::<String>(),
            ], 0..8),
            before in proptest::option::of(usage()),
        ) {
            let mut n = Normalizer::new(p);
            let mut longest = 0;
            for l in &lines {
                longest = longest.max(l.len());
                let evs = n.line(l);
                prop_assert!(evs.len() <= l.len().max(1));
                check_bounded(&n, longest)?;
                // Claude's input total is the sum of its parts: never less
                // than one of them.
                let v: Value = serde_json::from_str(l).unwrap_or_default();
                if p == Provider::ClaudeCode && v.is_object() && v["type"] == "result" {
                    let total = n.totals.map_or(0, |t| t.input_tokens);
                    let parts =
                        ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"];
                    for k in parts {
                        prop_assert!(total >= u(&v["usage"], k), "{} > the total {}", k, total);
                    }
                }
            }
            // The state comes back from its JSON (a cost perhaps a last
            // digit off: JSON floats are read back to the nearest few ulps).
            let s = n.summary(before);
            let state = serde_json::to_string(&n).unwrap();
            let back: Normalizer = serde_json::from_str(&state).unwrap();
            let b = back.summary(before);
            let cost = |s: &Summary| s.usage.and_then(|u| u.cost_usd);
            let close = match (cost(&s), cost(&b)) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= x.abs().max(y.abs()) * 1e-12,
                (x, y) => x.is_none() && y.is_none(),
            };
            prop_assert!(close, "cost {:?} came back as {:?}", cost(&s), cost(&b));
            let tokens = |s: &Summary| s.usage.map(|u| (u.input_tokens, u.output_tokens));
            prop_assert_eq!(tokens(&b), tokens(&s));
            prop_assert_eq!(
                (&b.conversation_id, &b.answer, b.is_error, &b.error),
                (&s.conversation_id, &s.answer, s.is_error, &s.error)
            );
        }
    }

    #[test]
    fn a_long_gemini_answer_is_kept_to_its_first_bytes() {
        let mut n = Normalizer::new(Provider::GeminiCli);
        let text = "é".repeat(100_000);
        let delta = json!({"type": "message", "role": "assistant", "content": text, "delta": true})
            .to_string();
        for _ in 0..12 {
            assert_eq!(
                kinds(&n.line(&delta)),
                ["text"],
                "every delta is still an event"
            );
        }
        let answer = n.summary(None).answer.unwrap();
        assert!(answer.len() <= MAX_ANSWER_BYTES && answer.len() > MAX_ANSWER_BYTES - 4);
        assert!(answer.chars().all(|c| c == 'é'));
        assert!(serde_json::to_string(&n).unwrap().len() < 3 * MAX_ANSWER_BYTES);
    }
}
