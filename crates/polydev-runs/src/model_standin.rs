//! A stand-in for the three streaming model APIs the CLIs call, on one
//! HTTP server, so that the real CLIs (claude-code 2.1.330, codex 0.169.0,
//! gemini-cli 0.61.0) run against it unmodified, pointed there by
//! configuration only. Deterministic, so tests can assert on what the CLIs
//! print and on what reached the server ([`ModelStandin::requests`]).
//!
//! | API | paths | key |
//! |---|---|---|
//! | Anthropic Messages | `POST /v1/messages` (Claude Code adds `?beta=true`), `POST /v1/messages/count_tokens` | `x-api-key` (or `Authorization: Bearer`) |
//! | OpenAI Responses | `POST /v1/responses` (SSE), `GET /v1/responses` as a WebSocket; the same at `/backend-api/codex/responses` (ChatGPT sign-in) | `Authorization: Bearer` |
//! | Gemini | `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`, `:generateContent`, `:countTokens` | `x-goog-api-key` or `?key=` |
//! | ChatGPT sign-in | `POST /oauth/token`, `GET /backend-api/wham/accounts/check` | refresh token / bearer |
//!
//! The model: a prompt's answer is `standin answer <n>: <echo of the last
//! user text>`, `<n>` the user turns in the request's history (so a resumed
//! conversation says 2), streamed in at least three text deltas. A prompt
//! with `RUN_SHELL: <command>` gets a call of the CLI's shell tool with that
//! command, and once the tool's result comes back, `standin answer <n>: tool
//! said: <first line of the output>`. `WORDS: <k>` answers k words, one
//! delta each; `SLOW` sends the answer's events 0.7 s apart. Every final event carries usage: input
//! 10 × user turns, output 5. The key `bad-key` gets 401 in the provider's
//! error shape; a body that is not JSON gets 400 in it; any other path 404
//! (everything is logged). User turns are user messages with text of the
//! user's own: tool results and the context the CLIs inject as whole text
//! parts (`<system-reminder>`, `<environment_context>`, `<session_context>`,
//! `# AGENTS.md instructions…`) are not turns.
//!
//! What each CLI sends, as measured:
//! - Claude Code (`ANTHROPIC_BASE_URL`, `ANTHROPIC_API_KEY`): `HEAD
//!   /api/hello` at start-up (a pre-connect whose answer is ignored; skipped
//!   with `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`), then one `POST
//!   /v1/messages?beta=true` per model turn, `stream: true`, `x-api-key`.
//!   The first user message holds a `<system-reminder>` text block and the
//!   prompt; the system prompt also comes as a `role: "system"` message.
//!   The shell tool is `Bash` (`{"command", "description"}`). Tool results
//!   come back as a user message of `tool_result` blocks. A 401 is retried
//!   (`CLAUDE_CODE_MAX_RETRIES`, default 10, backing off to ~40 s).
//! - Codex (`-c openai_base_url=…/v1`, `CODEX_API_KEY`): opens a WebSocket
//!   `GET /v1/responses` first (HTTP `POST` only after five failed
//!   upgrades, printing `Reconnecting…` error lines), sends a warm-up
//!   `response.create` with `generate: false` and no input, then the turn
//!   with `previous_response_id` of the warm-up and only new items; a tool
//!   round trip continues the same way (only the tool output). Hence the
//!   WebSocket session keeps each response's whole conversation. Tools are
//!   not in `tools` but in an `additional_tools` input item, in namespaces;
//!   the default model (`gpt-6.1-sol`) gets "code mode": one custom
//!   (freeform) tool `exec` that runs JavaScript calling `tools.exec_command
//!   ({cmd})`; its output comes back as a `custom_tool_call_output` whose
//!   text parts are `Script completed…`, `Output:`, then the command's
//!   output. (A request offering plain `shell_command`, `exec_command` or
//!   `shell` functions gets a `function_call` instead.) A 401 is retried five
//!   times per transport (about 13 s) before `turn.failed`.
//! - Codex signed in with ChatGPT (`~/.codex/auth.json` with `tokens`): when
//!   `last_refresh` is more than 8 days old it first refreshes at
//!   `CODEX_REFRESH_TOKEN_URL_OVERRIDE` (JSON `{client_id, grant_type:
//!   "refresh_token", refresh_token, refresh_reason: "scheduled"}`) and
//!   rewrites auth.json (new tokens, `last_refresh`). It then calls
//!   `{chatgpt_base_url}/wham/accounts/check` (workspace routing) and the
//!   Responses API at `{chatgpt_base_url}/codex/responses` (WebSocket
//!   first), plus plugin, settings and analytics paths whose 404s it
//!   tolerates. Workspace routing refuses a `chatgpt_base_url` that is not
//!   HTTPS, so this path needs TLS in front of the stand-in and the CA in
//!   `CODEX_CA_CERTIFICATE` (or `SSL_CERT_FILE`); the token endpoint may be
//!   plain HTTP. The id tokens here are unsigned JWTs; Codex does not check
//!   signatures.
//! - Gemini CLI (`GOOGLE_GEMINI_BASE_URL`, `GEMINI_API_KEY`, settings
//!   `security.auth.selectedType = "gemini-api-key"`): per turn a routing
//!   classifier `:generateContent` (JSON schema output, `complexity_score`
//!   an integer ≥ 1, on a flash-lite model), then
//!   `:streamGenerateContent?alt=sse` on the chosen model, key in
//!   `x-goog-api-key`. A `<session_context>` text part precedes the prompt.
//!   `run_shell_command` (`{"command", "description"}`) is only offered with
//!   `--approval-mode yolo` (or `--yolo`); its result comes back as a
//!   `functionResponse` whose `output` reads `<untrusted_context>\nOutput:
//!   …\nProcess Group PGID: …`. A 401 is not retried.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use polydev_core::auth::Provider;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The API key that every API refuses with 401.
pub const BAD_KEY: &str = "bad-key";

/// Output tokens reported for every answer.
const OUTPUT_TOKENS: u64 = 5;

/// One request as it reached the stand-in.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoggedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Whose API the path belongs to (`None`: a path of none of them).
    pub provider: Option<Provider>,
    /// The API key (or bearer token) the request carried.
    pub api_key: Option<String>,
    /// User turns in the request's conversation history.
    pub user_turns: usize,
    /// The body: JSON, a string when it was not JSON, `null` when empty.
    pub body: Value,
}

/// The stand-in's state: its request log and counters.
#[derive(Debug, Default)]
pub struct ModelStandin {
    log: Mutex<Vec<LoggedRequest>>,
    ids: AtomicU64,
    refreshes: AtomicU64,
}

impl ModelStandin {
    /// A stand-in with an empty log.
    pub fn new() -> ModelStandin {
        ModelStandin::default()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// How many token refreshes the token endpoint has answered.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    fn record(&self, r: LoggedRequest) {
        if let Ok(mut l) = self.log.lock() {
            l.push(r);
        }
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// The stand-in's routes.
pub fn router(state: Arc<ModelStandin>) -> Router {
    Router::new()
        .route("/v1/messages", post_only(anthropic::messages))
        .route(
            "/v1/messages/count_tokens",
            post_only(anthropic::count_tokens),
        )
        .route("/v1/responses", responses_route())
        .route("/backend-api/codex/responses", responses_route())
        .route("/v1beta/models/{target}", post_only(gemini::call))
        .route("/oauth/token", post_only(oauth::token))
        .route(
            "/backend-api/wham/accounts/check",
            axum::routing::get(oauth::accounts_check).fallback(unknown),
        )
        .fallback(unknown)
        .with_state(state)
}

/// Serves the stand-in on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<ModelStandin>) {
    if let Err(e) = axum::serve(listener, router(state)).await {
        eprintln!("model stand-in: serving failed: {e}");
    }
}

fn responses_route() -> MethodRouter<Arc<ModelStandin>> {
    axum::routing::post(openai::responses)
        .get(openai::responses_ws)
        .fallback(unknown)
}

fn post_only<H, T>(h: H) -> MethodRouter<Arc<ModelStandin>>
where
    H: axum::handler::Handler<T, Arc<ModelStandin>>,
    T: 'static,
{
    axum::routing::post(h).fallback(unknown)
}

/// What a request arrived with, before it is understood.
struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Incoming {
    fn query_param(&self, name: &str) -> Option<String> {
        self.uri.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn bearer(&self) -> Option<String> {
        let h = self.header("authorization")?;
        let (scheme, token) = h.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    }

    /// The body as JSON; `Err` says why it is not.
    fn json(&self) -> Result<Value, String> {
        if self.body.is_empty() {
            return Err("the request body is empty; expected a JSON object".into());
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err("the request body is JSON but not an object".into()),
            Err(e) => Err(format!("the request body is not valid JSON: {e}")),
        }
    }

    fn body_for_log(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    fn log_entry(
        &self,
        provider: Option<Provider>,
        api_key: Option<String>,
        user_turns: usize,
    ) -> LoggedRequest {
        LoggedRequest {
            method: self.method.to_string(),
            path: self.uri.path().to_string(),
            query: self.uri.query().map(str::to_string),
            provider,
            api_key,
            user_turns,
            body: self.body_for_log(),
        }
    }
}

/// The conversation as the model sees it, whatever the API.
#[derive(Debug, Default, Clone, PartialEq)]
struct Conversation {
    /// User turns (messages with the user's own text, not tool results or
    /// context the CLI injects).
    user_turns: usize,
    /// The text of the last user turn.
    last_user_text: String,
    /// The last tool output after the last user turn.
    tool_output: Option<String>,
}

/// What the model answers.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// Text, streamed in pieces.
    Text(String),
    /// A call of the CLI's shell tool with this command.
    Shell(String),
}

impl Conversation {
    fn reply(&self) -> Reply {
        let n = self.user_turns;
        match (shell_request(&self.last_user_text), &self.tool_output) {
            (Some(_), Some(out)) => Reply::Text(format!(
                "standin answer {n}: tool said: {}",
                first_output_line(out)
            )),
            (Some(cmd), None) => Reply::Shell(cmd),
            (None, _) => match words_request(&self.last_user_text) {
                Some(k) => Reply::Text(format!(
                    "standin answer {n}: {}",
                    (1..=k)
                        .map(|i| format!("w{i}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )),
                None => Reply::Text(format!(
                    "standin answer {n}: {}",
                    echo(&self.last_user_text)
                )),
            },
        }
    }

    fn input_tokens(&self) -> u64 {
        10 * self.user_turns as u64
    }
}

/// The command after `RUN_SHELL:`, to the end of its line.
fn shell_request(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("RUN_SHELL:")?;
    let cmd = rest.lines().next().unwrap_or("").trim();
    (!cmd.is_empty()).then(|| cmd.to_string())
}

/// The word count after `WORDS:` (at most 20,000): a long answer streamed
/// one word per delta, for throughput figures.
fn words_request(text: &str) -> Option<usize> {
    let (_, rest) = text.split_once("WORDS:")?;
    let n: usize = rest.split_whitespace().next()?.parse().ok()?;
    Some(n.clamp(1, 20_000))
}

/// A prompt with `SLOW` gets its answer's events one every
/// [`SLOW_EVENT_GAP`] (for tests that act while a run streams).
pub const SLOW_EVENT_GAP: std::time::Duration = std::time::Duration::from_millis(700);

/// Whether a request asks for the slow pace: its last user text says `SLOW`.
fn is_slow(conv: &Conversation) -> bool {
    conv.last_user_text.contains("SLOW")
}

/// A short, one-line echo of the user's text.
fn echo(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let short: String = one_line.chars().take(60).collect();
    if short.is_empty() {
        "(no text)".to_string()
    } else {
        short
    }
}

/// The first line of a tool's output, past the headers the CLIs wrap it in
/// (`Output:` / `Stdout:` lines, JSON with an `output` field).
fn first_output_line(raw: &str) -> String {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(raw) {
        if let Some(inner) = o.get("output").and_then(Value::as_str) {
            return first_output_line(inner);
        }
    }
    let lines: Vec<&str> = raw.lines().collect();
    for label in ["Output:", "Stdout:"] {
        if let Some(i) = lines.iter().position(|l| l.trim_start().starts_with(label)) {
            let rest = lines[i].trim_start()[label.len()..].trim();
            if !rest.is_empty() {
                return rest.to_string();
            }
            if let Some(next) = lines[i + 1..].iter().find(|l| !l.trim().is_empty()) {
                return next.trim().to_string();
            }
        }
    }
    lines
        .iter()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .unwrap_or_default()
}

/// Text the CLIs add to user messages themselves (`<environment_context>`,
/// `<system-reminder>`, `# AGENTS.md instructions`, …): not a user turn.
fn is_injected(text: &str) -> bool {
    let t = text.trim();
    t.is_empty()
        || (t.starts_with('<') && t.ends_with('>'))
        || t.starts_with("# AGENTS.md instructions")
}

/// Splits text into at least three pieces (fewer only for under 3 chars);
/// a text of more than 40 words, one piece per word.
fn pieces(text: &str) -> Vec<String> {
    if text.split(' ').count() > 40 {
        let mut out: Vec<String> = text.split(' ').map(|w| format!("{w} ")).collect();
        if let Some(last) = out.last_mut() {
            last.pop();
        }
        return out;
    }
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(3).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Splits a tool call's JSON arguments into pieces, as streamed.
fn json_pieces(args: &Value) -> Vec<String> {
    pieces(&args.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Server-sent events with `event:` names (Anthropic, OpenAI).
fn sse_named(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

/// Server-sent events with data only (Google).
fn sse_data(chunks: &[Value]) -> String {
    chunks
        .iter()
        .map(|data| format!("data: {data}\r\n\r\n"))
        .collect()
}

/// An SSE body sent one event at a time, [`SLOW_EVENT_GAP`] apart.
fn sse_paced(body: String) -> Response {
    let sep = if body.contains("\r\n\r\n") {
        "\r\n\r\n"
    } else {
        "\n\n"
    };
    let events: Vec<String> = body.split_inclusive(sep).map(str::to_string).collect();
    let stream = futures_util::stream::unfold(events.into_iter(), |mut it| async move {
        let e = it.next()?;
        tokio::time::sleep(SLOW_EVENT_GAP).await;
        Some((Ok::<_, std::convert::Infallible>(e), it))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

fn sse_maybe_paced(body: String, slow: bool) -> Response {
    if slow {
        sse_paced(body)
    } else {
        sse_response(body)
    }
}

fn sse_response(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A refused request: its status and the provider's error body.
type Refusal = (StatusCode, Value);

fn refuse((status, body): Refusal) -> Response {
    json_response(status, body)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Any other path: logged, and 404 in the shape of the API it looks like.
async fn unknown(
    State(st): State<Arc<ModelStandin>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = Incoming {
        method,
        uri,
        headers,
        body,
    };
    let provider = guess_provider(&req);
    let key = match provider {
        Some(Provider::ClaudeCode) => anthropic::api_key(&req),
        Some(Provider::GeminiCli) => gemini::api_key(&req),
        _ => req.bearer(),
    };
    st.record(req.log_entry(provider, key, 0));
    let msg = format!(
        "the model stand-in has no route for {} {}",
        req.method,
        req.uri.path()
    );
    match provider {
        Some(Provider::ClaudeCode) => {
            anthropic::error(StatusCode::NOT_FOUND, "not_found_error", &msg)
        }
        Some(Provider::GeminiCli) => gemini::error(StatusCode::NOT_FOUND, &msg),
        _ => openai::error(StatusCode::NOT_FOUND, "invalid_request_error", None, &msg),
    }
}

fn guess_provider(req: &Incoming) -> Option<Provider> {
    let path = req.uri.path();
    if path.starts_with("/v1beta") || req.header("x-goog-api-key").is_some() {
        Some(Provider::GeminiCli)
    } else if req.header("x-api-key").is_some() || req.header("anthropic-version").is_some() {
        Some(Provider::ClaudeCode)
    } else if path.starts_with("/v1") || path.starts_with("/backend-api") {
        Some(Provider::Codex)
    } else {
        None
    }
}

/// The Anthropic Messages API.
mod anthropic {
    use super::*;

    pub(super) fn api_key(req: &Incoming) -> Option<String> {
        req.header("x-api-key").or_else(|| req.bearer())
    }

    fn error_body(kind: &str, message: &str) -> Value {
        json!({"type": "error", "error": {"type": kind, "message": message}})
    }

    pub(super) fn error(status: StatusCode, kind: &str, message: &str) -> Response {
        json_response(status, error_body(kind, message))
    }

    /// Checks key and body; logs the request either way.
    fn accept(st: &ModelStandin, req: &Incoming) -> Result<(Value, Conversation), Refusal> {
        let key = api_key(req);
        let body = match req.json() {
            Ok(b) => b,
            Err(e) => {
                st.record(req.log_entry(Some(Provider::ClaudeCode), key, 0));
                return Err((
                    StatusCode::BAD_REQUEST,
                    error_body("invalid_request_error", &e),
                ));
            }
        };
        let conv = conversation(&body);
        st.record(req.log_entry(Some(Provider::ClaudeCode), key.clone(), conv.user_turns));
        let auth = |msg: &str| {
            (
                StatusCode::UNAUTHORIZED,
                error_body("authentication_error", msg),
            )
        };
        match key.as_deref() {
            None => Err(auth("x-api-key header is required")),
            Some(BAD_KEY) => Err(auth("invalid x-api-key")),
            Some(_) => Ok((body, conv)),
        }
    }

    pub(super) async fn count_tokens(
        State(st): State<Arc<ModelStandin>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let req = Incoming {
            method,
            uri,
            headers,
            body,
        };
        match accept(&st, &req) {
            Ok((_, conv)) => {
                json_response(StatusCode::OK, json!({"input_tokens": conv.input_tokens()}))
            }
            Err(r) => refuse(r),
        }
    }

    pub(super) async fn messages(
        State(st): State<Arc<ModelStandin>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let req = Incoming {
            method,
            uri,
            headers,
            body,
        };
        let (body, conv) = match accept(&st, &req) {
            Ok(x) => x,
            Err(r) => return refuse(r),
        };
        let model = body["model"]
            .as_str()
            .unwrap_or("claude-standin")
            .to_string();
        let id = st.next_id();
        let block = content_block(&conv.reply(), id);
        if body["stream"].as_bool().unwrap_or(false) {
            sse_maybe_paced(stream(&model, id, &block, &conv), is_slow(&conv))
        } else {
            json_response(StatusCode::OK, whole(&model, id, &block, &conv))
        }
    }

    /// The answer's one content block, complete.
    fn content_block(reply: &Reply, id: u64) -> Value {
        match reply {
            Reply::Text(t) => json!({"type": "text", "text": t}),
            Reply::Shell(cmd) => json!({
                "type": "tool_use",
                "id": format!("toolu_standin_{id}"),
                "name": "Bash",
                "input": {"command": cmd, "description": "Run the requested command"},
            }),
        }
    }

    fn stop_reason(block: &Value) -> &'static str {
        if block["type"] == "tool_use" {
            "tool_use"
        } else {
            "end_turn"
        }
    }

    fn usage(conv: &Conversation) -> Value {
        json!({
            "input_tokens": conv.input_tokens(),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": OUTPUT_TOKENS,
        })
    }

    fn whole(model: &str, id: u64, block: &Value, conv: &Conversation) -> Value {
        json!({
            "id": format!("msg_standin_{id}"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop_reason(block),
            "stop_sequence": null,
            "usage": usage(conv),
        })
    }

    fn stream(model: &str, id: u64, block: &Value, conv: &Conversation) -> String {
        let mut start = whole(model, id, block, conv);
        start["content"] = json!([]);
        start["stop_reason"] = Value::Null;
        start["usage"]["output_tokens"] = json!(1);
        let mut events = vec![
            (
                "message_start",
                json!({"type": "message_start", "message": start}),
            ),
            ("ping", json!({"type": "ping"})),
        ];
        let (empty, deltas) = match block["type"].as_str() {
            Some("tool_use") => {
                let mut b = block.clone();
                b["input"] = json!({});
                let d = json_pieces(&block["input"])
                    .into_iter()
                    .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                    .collect::<Vec<_>>();
                (b, d)
            }
            _ => (
                json!({"type": "text", "text": ""}),
                pieces(block["text"].as_str().unwrap_or(""))
                    .into_iter()
                    .map(|p| json!({"type": "text_delta", "text": p}))
                    .collect(),
            ),
        };
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": empty}),
        ));
        for d in deltas {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": d}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push((
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(block), "stop_sequence": null},
                "usage": usage(conv),
            }),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        sse_named(&events)
    }

    /// Texts of a message's content (a string or blocks).
    fn texts(content: &Value) -> Vec<String> {
        match content {
            Value::String(s) => vec![s.clone()],
            Value::Array(blocks) => blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn tool_results(content: &Value) -> Vec<String> {
        content
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "tool_result")
            .map(|b| match &b["content"] {
                Value::String(s) => s.clone(),
                other => texts(other).join("\n"),
            })
            .collect()
    }

    pub(super) fn conversation(body: &Value) -> Conversation {
        let mut conv = Conversation::default();
        for m in body["messages"].as_array().into_iter().flatten() {
            if m["role"] != "user" {
                continue;
            }
            let results = tool_results(&m["content"]);
            let own: Vec<String> = texts(&m["content"])
                .into_iter()
                .filter(|t| !is_injected(t))
                .collect();
            if results.is_empty() && !own.is_empty() {
                conv.user_turns += 1;
                conv.last_user_text = own.join("\n");
                conv.tool_output = None;
            } else if let Some(last) = results.into_iter().last() {
                conv.tool_output = Some(last);
            }
        }
        conv
    }
}

/// The OpenAI Responses API: `POST` with SSE, or a WebSocket on the same
/// path (API key at `/v1/responses`, ChatGPT sign-in at
/// `/backend-api/codex/responses`).
mod openai {
    use super::*;
    use axum::extract::ws::rejection::WebSocketUpgradeRejection;
    use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};

    fn error_body(kind: &str, code: Option<&str>, message: &str) -> Value {
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    }

    pub(super) fn error(
        status: StatusCode,
        kind: &str,
        code: Option<&str>,
        message: &str,
    ) -> Response {
        json_response(status, error_body(kind, code, message))
    }

    /// Why a key is refused: status and error body.
    fn refusal(key: Option<&str>) -> Option<(StatusCode, Value)> {
        let body = match key {
            None => error_body(
                "invalid_request_error",
                None,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            ),
            Some(BAD_KEY) => error_body(
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key provided: bad-key. You can find your API key at https://platform.openai.com/account/api-keys.",
            ),
            Some(_) => return None,
        };
        Some((StatusCode::UNAUTHORIZED, body))
    }

    /// `POST …/responses`: SSE when `stream` is true, else the response.
    pub(super) async fn responses(
        State(st): State<Arc<ModelStandin>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let req = Incoming {
            method,
            uri,
            headers,
            body,
        };
        let key = req.bearer();
        let body = match req.json() {
            Ok(b) => b,
            Err(e) => {
                st.record(req.log_entry(Some(Provider::Codex), key, 0));
                return error(StatusCode::BAD_REQUEST, "invalid_request_error", None, &e);
            }
        };
        let conv = conversation(&body);
        st.record(req.log_entry(Some(Provider::Codex), key.clone(), conv.user_turns));
        if let Some((status, err)) = refusal(key.as_deref()) {
            return json_response(status, err);
        }
        let (response, events) = answer(&st, &body, &conv);
        if body["stream"].as_bool().unwrap_or(false) {
            sse_maybe_paced(sse_named(&events), is_slow(&conv))
        } else {
            json_response(StatusCode::OK, response)
        }
    }

    /// `GET …/responses` with a WebSocket upgrade: Codex's default
    /// transport. The key is checked at the upgrade.
    pub(super) async fn responses_ws(
        State(st): State<Arc<ModelStandin>>,
        ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response {
        let req = Incoming {
            method,
            uri,
            headers,
            body: Bytes::new(),
        };
        let key = req.bearer();
        st.record(req.log_entry(Some(Provider::Codex), key.clone(), 0));
        if let Some((status, err)) = refusal(key.as_deref()) {
            return json_response(status, err);
        }
        let Ok(ws) = ws else {
            let msg = format!(
                "GET {} needs a WebSocket upgrade; use POST for HTTP",
                req.uri.path()
            );
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", None, &msg);
        };
        let ctx = WsContext {
            path: req.uri.path().to_string(),
            query: req.uri.query().map(str::to_string),
            key,
        };
        ws.on_upgrade(move |socket| session(st, socket, ctx))
    }

    /// Where a WebSocket's messages came from, for the log.
    pub(super) struct WsContext {
        pub(super) path: String,
        pub(super) query: Option<String>,
        pub(super) key: Option<String>,
    }

    /// The last response on a connection: its id and the whole conversation
    /// up to it (input and output), for requests that continue it with
    /// `previous_response_id` and only the new items.
    #[derive(Default)]
    pub(super) struct Previous {
        id: String,
        items: Vec<Value>,
    }

    async fn session(st: Arc<ModelStandin>, mut socket: WebSocket, ctx: WsContext) {
        let mut prev = None;
        while let Some(Ok(msg)) = socket.recv().await {
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Close(_) => break,
                _ => continue,
            };
            let slow = text.contains("SLOW");
            for event in ws_message(&st, &ctx, &text, &mut prev) {
                if slow {
                    tokio::time::sleep(SLOW_EVENT_GAP).await;
                }
                if socket
                    .send(Message::Text(event.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    fn ws_error(status: StatusCode, err: Value) -> Value {
        let mut e = err;
        e["type"] = json!("error");
        e["status"] = json!(status.as_u16());
        e
    }

    /// One WebSocket message: the events to send back (none for messages
    /// other than `response.create`, e.g. `response.processed`).
    pub(super) fn ws_message(
        st: &ModelStandin,
        ctx: &WsContext,
        text: &str,
        prev: &mut Option<Previous>,
    ) -> Vec<Value> {
        let log = |body: Value, turns: usize| LoggedRequest {
            method: "WS".to_string(),
            path: ctx.path.clone(),
            query: ctx.query.clone(),
            provider: Some(Provider::Codex),
            api_key: ctx.key.clone(),
            user_turns: turns,
            body,
        };
        let body = match serde_json::from_str::<Value>(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                st.record(log(Value::String(text.to_string()), 0));
                let msg = "the WebSocket message is not a JSON object";
                return vec![ws_error(
                    StatusCode::BAD_REQUEST,
                    error_body("invalid_request_error", None, msg),
                )];
            }
        };
        if body["type"] != "response.create" {
            return Vec::new();
        }
        let full = match with_previous(&body, prev) {
            Ok(f) => f,
            Err(e) => {
                st.record(log(body, 0));
                return vec![e];
            }
        };
        let conv = conversation(&full);
        st.record(log(body, conv.user_turns));
        let (response, events) = answer(st, &full, &conv);
        let mut items = full["input"].as_array().cloned().unwrap_or_default();
        items.extend(response["output"].as_array().cloned().unwrap_or_default());
        *prev = Some(Previous {
            id: response["id"].as_str().unwrap_or_default().to_string(),
            items,
        });
        events.into_iter().map(|(_, data)| data).collect()
    }

    /// The request with the connection's earlier items before its own
    /// when it continues `previous_response_id`.
    fn with_previous(body: &Value, prev: &Option<Previous>) -> Result<Value, Value> {
        let Some(id) = body["previous_response_id"].as_str() else {
            return Ok(body.clone());
        };
        let Some(p) = prev.as_ref().filter(|p| p.id == id) else {
            let msg = format!("Previous response with id '{id}' not found.");
            let err = error_body(
                "invalid_request_error",
                Some("previous_response_not_found"),
                &msg,
            );
            return Err(ws_error(StatusCode::BAD_REQUEST, err));
        };
        let mut full = body.clone();
        let mut items = p.items.clone();
        items.extend(input_items(body));
        full["input"] = Value::Array(items);
        Ok(full)
    }

    /// The response object and its stream events.
    fn answer(
        st: &ModelStandin,
        body: &Value,
        conv: &Conversation,
    ) -> (Value, Vec<(&'static str, Value)>) {
        let id = st.next_id();
        if body["generate"] == json!(false) {
            // A warm-up: a response with no output.
            let response = response_object(body, id, None, conv);
            return (response.clone(), stream(&response, None));
        }
        let item = output_item(&conv.reply(), &tools(body), id);
        let response = response_object(body, id, Some(&item), conv);
        let events = stream(&response, Some(&item));
        (response, events)
    }

    /// Every tool the request offers: top-level `tools` and Codex's
    /// `additional_tools` input items, namespaces flattened.
    pub(super) fn tools(body: &Value) -> Vec<Value> {
        fn flatten(list: &Value, out: &mut Vec<Value>) {
            for t in list.as_array().into_iter().flatten() {
                if t.get("tools").is_some() {
                    flatten(&t["tools"], out);
                } else {
                    out.push(t.clone());
                }
            }
        }
        let mut out = Vec::new();
        flatten(&body["tools"], &mut out);
        for item in input_items(body) {
            if item["type"] == "additional_tools" {
                flatten(&item["tools"], &mut out);
            }
        }
        out
    }

    /// How to run `cmd` with the offered tools: a function call of a shell
    /// tool (`shell_command`, `exec_command`, `shell`), or, in Codex's code
    /// mode, the `exec` tool with JavaScript that calls
    /// `tools.exec_command`. Name, and the item's type-specific fields.
    pub(super) fn shell_call(tools: &[Value], cmd: &str) -> (String, Value) {
        let find = |name: &str| tools.iter().find(|t| t["name"] == name);
        for name in ["shell_command", "exec_command", "shell"] {
            let Some(tool) = find(name).filter(|t| t["type"] == "function") else {
                continue;
            };
            let props = &tool["parameters"]["properties"];
            let args = if props.get("cmd").is_some() {
                json!({"cmd": cmd})
            } else if props["command"]["type"] == "array" {
                json!({"command": ["bash", "-lc", cmd]})
            } else {
                json!({"command": cmd})
            };
            return (
                name.to_string(),
                json!({"type": "function_call", "arguments": args.to_string()}),
            );
        }
        if find("exec").is_some_and(|t| t["type"] == "custom") {
            let js = format!(
                "const r = await tools.exec_command({{cmd: {}}});\ntext(r.output);\n",
                Value::String(cmd.to_string())
            );
            return (
                "exec".to_string(),
                json!({"type": "custom_tool_call", "input": js}),
            );
        }
        let args = json!({"command": ["bash", "-lc", cmd]});
        (
            "shell".to_string(),
            json!({"type": "function_call", "arguments": args.to_string()}),
        )
    }

    /// The answer's one output item, complete.
    fn output_item(reply: &Reply, tools: &[Value], id: u64) -> Value {
        match reply {
            Reply::Text(t) => json!({
                "id": format!("msg_standin_{id}"),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": t, "annotations": []}],
            }),
            Reply::Shell(cmd) => {
                let (name, fields) = shell_call(tools, cmd);
                let prefix = if fields["type"] == "custom_tool_call" {
                    "ctc"
                } else {
                    "fc"
                };
                let mut item = json!({
                    "id": format!("{prefix}_standin_{id}"),
                    "status": "completed",
                    "name": name,
                    "call_id": format!("call_standin_{id}"),
                });
                if let (Some(o), Some(f)) = (item.as_object_mut(), fields.as_object()) {
                    o.extend(f.clone());
                }
                item
            }
        }
    }

    fn response_object(body: &Value, id: u64, item: Option<&Value>, conv: &Conversation) -> Value {
        let input = conv.input_tokens();
        let output = if item.is_some() { OUTPUT_TOKENS } else { 0 };
        json!({
            "id": format!("resp_standin_{id}"),
            "object": "response",
            "created_at": unix_now(),
            "status": "completed",
            "model": body["model"].as_str().unwrap_or("gpt-standin"),
            "output": item.into_iter().cloned().collect::<Vec<_>>(),
            "usage": {
                "input_tokens": input,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input + output,
            },
        })
    }

    /// The stream events of a response, numbered.
    fn stream(response: &Value, item: Option<&Value>) -> Vec<(&'static str, Value)> {
        let mut created = response.clone();
        created["status"] = json!("in_progress");
        created["output"] = json!([]);
        created["usage"] = Value::Null;
        let mut events = vec![
            (
                "response.created",
                json!({"type": "response.created", "response": created}),
            ),
            (
                "response.in_progress",
                json!({"type": "response.in_progress", "response": created}),
            ),
        ];
        if let Some(item) = item {
            item_events(&mut events, item);
        }
        events.push((
            "response.completed",
            json!({"type": "response.completed", "response": response}),
        ));
        events
            .into_iter()
            .enumerate()
            .map(|(i, (name, mut data))| {
                data["sequence_number"] = json!(i);
                (name, data)
            })
            .collect()
    }

    fn item_events(events: &mut Vec<(&'static str, Value)>, item: &Value) {
        let mut added = item.clone();
        added["status"] = json!("in_progress");
        match item["type"].as_str() {
            Some("function_call") => {
                added["arguments"] = json!("");
                events.push(item_added(added));
                input_events(events, item, "function_call_arguments", "arguments");
            }
            Some("custom_tool_call") => {
                added["input"] = json!("");
                events.push(item_added(added));
                input_events(events, item, "custom_tool_call_input", "input");
            }
            _ => {
                added["content"] = json!([]);
                events.push(item_added(added));
                text_events(events, item);
            }
        }
        events.push((
            "response.output_item.done",
            json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        ));
    }

    fn item_added(item: Value) -> (&'static str, Value) {
        (
            "response.output_item.added",
            json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
        )
    }

    /// `response.{kind}.delta` pieces of a tool call's `field`, then `.done`.
    fn input_events(
        events: &mut Vec<(&'static str, Value)>,
        item: &Value,
        kind: &str,
        field: &str,
    ) {
        let (delta, done): (&'static str, &'static str) = match kind {
            "custom_tool_call_input" => (
                "response.custom_tool_call_input.delta",
                "response.custom_tool_call_input.done",
            ),
            _ => (
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
            ),
        };
        let full = item[field].as_str().unwrap_or_default();
        for p in pieces(full) {
            events.push((
                delta,
                json!({"type": delta, "item_id": item["id"], "output_index": 0, "delta": p}),
            ));
        }
        let mut d = json!({"type": done, "item_id": item["id"], "output_index": 0});
        d[field] = json!(full);
        events.push((done, d));
    }

    fn text_events(events: &mut Vec<(&'static str, Value)>, item: &Value) {
        let text = item["content"][0]["text"].as_str().unwrap_or("");
        let at = |mut v: Value| {
            v["item_id"] = item["id"].clone();
            v["output_index"] = json!(0);
            v["content_index"] = json!(0);
            v
        };
        events.push((
            "response.content_part.added",
            at(json!({"type": "response.content_part.added", "part": {"type": "output_text", "text": "", "annotations": []}})),
        ));
        for p in pieces(text) {
            events.push((
                "response.output_text.delta",
                at(json!({"type": "response.output_text.delta", "delta": p})),
            ));
        }
        events.push((
            "response.output_text.done",
            at(json!({"type": "response.output_text.done", "text": text})),
        ));
        events.push((
            "response.content_part.done",
            at(json!({"type": "response.content_part.done", "part": item["content"][0]})),
        ));
    }

    fn message_texts(content: &Value) -> Vec<String> {
        match content {
            Value::String(s) => vec![s.clone()],
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn tool_output(item: &Value) -> String {
        match &item["output"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            other => message_texts(other).join("\n"),
        }
    }

    /// `input` as items (a string is one user message).
    fn input_items(body: &Value) -> Vec<Value> {
        match &body["input"] {
            Value::String(s) => vec![json!({"type": "message", "role": "user", "content": s})],
            Value::Array(a) => a.clone(),
            _ => Vec::new(),
        }
    }

    pub(super) fn conversation(body: &Value) -> Conversation {
        let mut conv = Conversation::default();
        for item in &input_items(body) {
            let kind = item["type"].as_str().unwrap_or("message");
            if kind.ends_with("_call_output") {
                conv.tool_output = Some(tool_output(item));
                continue;
            }
            if kind != "message" || item["role"] != "user" {
                continue;
            }
            let own: Vec<String> = message_texts(&item["content"])
                .into_iter()
                .filter(|t| !is_injected(t))
                .collect();
            if !own.is_empty() {
                conv.user_turns += 1;
                conv.last_user_text = own.join("\n");
                conv.tool_output = None;
            }
        }
        conv
    }
}

/// The Gemini API (`generativelanguage.googleapis.com`).
mod gemini {
    use super::*;

    pub(super) fn api_key(req: &Incoming) -> Option<String> {
        req.header("x-goog-api-key")
            .or_else(|| req.query_param("key"))
    }

    fn status_name(status: StatusCode) -> &'static str {
        match status {
            StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
            StatusCode::FORBIDDEN => "PERMISSION_DENIED",
            StatusCode::NOT_FOUND => "NOT_FOUND",
            _ => "INVALID_ARGUMENT",
        }
    }

    fn refusal(status: StatusCode, message: &str) -> Refusal {
        let body = json!({"error": {"code": status.as_u16(), "message": message, "status": status_name(status)}});
        (status, body)
    }

    pub(super) fn error(status: StatusCode, message: &str) -> Response {
        refuse(refusal(status, message))
    }

    fn accept(st: &ModelStandin, req: &Incoming) -> Result<(Value, Conversation), Refusal> {
        let key = api_key(req);
        let body = match req.json() {
            Ok(b) => b,
            Err(e) => {
                st.record(req.log_entry(Some(Provider::GeminiCli), key, 0));
                return Err(refusal(StatusCode::BAD_REQUEST, &e));
            }
        };
        let conv = conversation(&body);
        st.record(req.log_entry(Some(Provider::GeminiCli), key.clone(), conv.user_turns));
        match key.as_deref() {
            None => Err(refusal(
                StatusCode::FORBIDDEN,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            )),
            Some(BAD_KEY) => Err(refusal(
                StatusCode::UNAUTHORIZED,
                "API key not valid. Please pass a valid API key.",
            )),
            Some(_) => Ok((body, conv)),
        }
    }

    /// `POST /v1beta/models/{model}:{method}`.
    pub(super) async fn call(
        State(st): State<Arc<ModelStandin>>,
        Path(target): Path<String>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let req = Incoming {
            method,
            uri,
            headers,
            body,
        };
        let Some((model, action)) = target.split_once(':') else {
            return unknown(State(st), req.method, req.uri, req.headers, req.body).await;
        };
        let (model, action) = (model.to_string(), action.to_string());
        if !["streamGenerateContent", "generateContent", "countTokens"].contains(&action.as_str()) {
            return unknown(State(st), req.method, req.uri, req.headers, req.body).await;
        }
        let (body, conv) = match accept(&st, &req) {
            Ok(x) => x,
            Err(r) => return refuse(r),
        };
        match action.as_str() {
            "countTokens" => {
                json_response(StatusCode::OK, json!({"totalTokens": conv.input_tokens()}))
            }
            "generateContent" => {
                json_response(StatusCode::OK, whole(&body, &model, &conv, st.next_id()))
            }
            _ => {
                let chunks = chunks(&body, &model, &conv, st.next_id());
                if req.query_param("alt").as_deref() == Some("sse") {
                    sse_maybe_paced(sse_data(&chunks), is_slow(&conv))
                } else {
                    json_response(StatusCode::OK, Value::Array(chunks))
                }
            }
        }
    }

    /// The answer's parts: JSON when the request asks for JSON (the CLI's
    /// own checks, e.g. who speaks next), else the conversation's reply.
    fn parts(body: &Value, conv: &Conversation) -> Vec<Value> {
        if let Some(schema) = json_schema(body) {
            return vec![json!({"text": fill(&schema, "").to_string()})];
        }
        match conv.reply() {
            Reply::Text(t) => pieces(&t).into_iter().map(|p| json!({"text": p})).collect(),
            Reply::Shell(cmd) => vec![json!({"functionCall": {
                "name": "run_shell_command",
                "args": {"command": cmd, "description": "Run the requested command"},
            }})],
        }
    }

    fn json_schema(body: &Value) -> Option<Value> {
        let cfg = body.get("generationConfig")?;
        let schema = cfg
            .get("responseJsonSchema")
            .or_else(|| cfg.get("responseSchema"))
            .cloned();
        let wants_json = cfg["responseMimeType"] == "application/json";
        match schema {
            Some(s) => Some(s),
            None if wants_json => Some(json!({"type": "object"})),
            None => None,
        }
    }

    /// A value that fits a (JSON or OpenAPI) schema: enums their first
    /// value (`next_speaker`: the user, so the CLI ends its turn), strings
    /// `standin`, integers their minimum or 1 (the router's
    /// `complexity_score` must be at least 1), numbers their minimum or 0
    /// (a loop check's confidence), booleans false, arrays empty.
    pub(super) fn fill(schema: &Value, key: &str) -> Value {
        if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
            if key == "next_speaker" {
                return json!("user");
            }
            return first.clone();
        }
        let kind = schema["type"]
            .as_str()
            .unwrap_or("object")
            .to_ascii_lowercase();
        match kind.as_str() {
            "object" => {
                let props = schema["properties"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let filled: Map<String, Value> =
                    props.iter().map(|(k, s)| (k.clone(), fill(s, k))).collect();
                Value::Object(filled)
            }
            "array" => json!([]),
            "string" if key == "next_speaker" => json!("user"),
            "string" => json!("standin"),
            "integer" => json!(schema["minimum"].as_i64().unwrap_or(1)),
            "number" => json!(schema["minimum"].as_f64().unwrap_or(0.0)),
            "boolean" => json!(false),
            _ => Value::Null,
        }
    }

    fn usage(conv: &Conversation) -> Value {
        let input = conv.input_tokens();
        json!({
            "promptTokenCount": input,
            "candidatesTokenCount": OUTPUT_TOKENS,
            "totalTokenCount": input + OUTPUT_TOKENS,
        })
    }

    fn chunk(parts: Vec<Value>, model: &str, id: u64) -> Value {
        json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "modelVersion": model,
            "responseId": format!("standin-{id}"),
        })
    }

    fn chunks(body: &Value, model: &str, conv: &Conversation, id: u64) -> Vec<Value> {
        let mut out: Vec<Value> = parts(body, conv)
            .into_iter()
            .map(|p| chunk(vec![p], model, id))
            .collect();
        if let Some(last) = out.last_mut() {
            last["candidates"][0]["finishReason"] = json!("STOP");
            last["usageMetadata"] = usage(conv);
        }
        out
    }

    fn whole(body: &Value, model: &str, conv: &Conversation, id: u64) -> Value {
        let mut parts = parts(body, conv);
        if parts.iter().all(|p| p.get("text").is_some()) {
            let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
            parts = vec![json!({"text": text})];
        }
        let mut c = chunk(parts, model, id);
        c["candidates"][0]["finishReason"] = json!("STOP");
        c["usageMetadata"] = usage(conv);
        c
    }

    fn function_output(part: &Value) -> Option<String> {
        let resp = &part.get("functionResponse")?["response"];
        let out = resp
            .get("output")
            .or_else(|| resp.get("content"))
            .or_else(|| resp.get("error"))
            .unwrap_or(resp);
        Some(match out {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    pub(super) fn conversation(body: &Value) -> Conversation {
        let mut conv = Conversation::default();
        for c in body["contents"].as_array().into_iter().flatten() {
            if c["role"] != "user" {
                continue;
            }
            let parts = c["parts"].as_array().cloned().unwrap_or_default();
            let results: Vec<String> = parts.iter().filter_map(function_output).collect();
            let own: Vec<String> = parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .filter(|t| !is_injected(t))
                .map(str::to_string)
                .collect();
            if results.is_empty() && !own.is_empty() {
                conv.user_turns += 1;
                conv.last_user_text = own.join("\n");
                conv.tool_output = None;
            } else if let Some(last) = results.into_iter().last() {
                conv.tool_output = Some(last);
            }
        }
        conv
    }
}

/// The ChatGPT sign-in's token endpoint (`auth.openai.com/oauth/token`):
/// refreshes rotate, the k-th returning access token `standin-access-<k>`,
/// refresh token `standin-refresh-<k>` and a fresh (unsigned) id token.
/// A Codex `auth.json` signed in with ChatGPT: generation `k` of the
/// stand-in's tokens (`standin-access-<k>`), last refreshed at
/// `last_refresh` (RFC 3339; Codex refreshes when it is over 8 days old).
pub fn codex_auth_file(k: u64, last_refresh: &str) -> String {
    let t = oauth::tokens(k);
    json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": t["id_token"],
            "access_token": t["access_token"],
            "refresh_token": t["refresh_token"],
            "account_id": oauth::ACCOUNT_ID,
        },
        "last_refresh": last_refresh,
    })
    .to_string()
}

mod oauth {
    use super::*;

    /// The account the id tokens name.
    pub(super) const ACCOUNT_ID: &str = "standin-account";
    const EMAIL: &str = "standin@example.test";

    fn error(status: StatusCode, code: &str, message: &str) -> Response {
        json_response(
            status,
            json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
        )
    }

    /// The request's fields: a JSON object or a form.
    fn fields(body: &[u8]) -> Map<String, Value> {
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) {
            return o;
        }
        String::from_utf8_lossy(body)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), Value::String(percent_decode(v))))
            .collect()
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (b'+', _) => {
                    out.push(b' ');
                    i += 1;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub(super) async fn token(
        State(st): State<Arc<ModelStandin>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let req = Incoming {
            method,
            uri,
            headers,
            body,
        };
        let f = fields(&req.body);
        let refresh = f
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_string);
        st.record(req.log_entry(Some(Provider::Codex), refresh.clone(), 0));
        if f.get("grant_type").and_then(Value::as_str) != Some("refresh_token") {
            return error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be refresh_token",
            );
        }
        match refresh.as_deref() {
            None | Some("") => error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "refresh_token is required",
            ),
            Some(BAD_KEY) => error(
                StatusCode::UNAUTHORIZED,
                "refresh_token_invalidated",
                "Your refresh token has been invalidated. Please try signing in again.",
            ),
            Some(_) => {
                let k = st.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
                json_response(StatusCode::OK, tokens(k))
            }
        }
    }

    /// `GET {chatgpt_base_url}/wham/accounts/check`: Codex's workspace
    /// routing discovery before each ChatGPT-authenticated model call. One
    /// workspace, the account the request names (`chatgpt-account-id`), with
    /// no routing constraint, so Codex keeps its configured backend.
    pub(super) async fn accounts_check(
        State(st): State<Arc<ModelStandin>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response {
        let req = Incoming {
            method,
            uri,
            headers,
            body: Bytes::new(),
        };
        let key = req.bearer();
        st.record(req.log_entry(Some(Provider::Codex), key.clone(), 0));
        if matches!(key.as_deref(), None | Some(BAD_KEY)) {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "Invalid or missing access token.",
            );
        }
        let account = req
            .header("chatgpt-account-id")
            .unwrap_or_else(|| ACCOUNT_ID.to_string());
        json_response(
            StatusCode::OK,
            json!({
                "accounts": [{
                    "id": account,
                    "name": null,
                    "plan_type": "plus",
                    "structure": "personal",
                    "profile_picture_url": null,
                    "workspace_backend_origin": "NO_CONSTRAINT",
                    "account_routing_override": "NO_CONSTRAINT",
                }],
                "account_ordering": [account],
                "default_account_id": account,
            }),
        )
    }

    /// The k-th refresh's tokens.
    pub(super) fn tokens(k: u64) -> Value {
        json!({
            "id_token": id_token(),
            "access_token": format!("standin-access-{k}"),
            "refresh_token": format!("standin-refresh-{k}"),
            "token_type": "Bearer",
            "expires_in": 864000,
            "scope": "openid profile email offline_access",
        })
    }

    /// An unsigned JWT with what Codex reads from an id token: the email and
    /// the `https://api.openai.com/auth` claims (account, plan).
    pub(super) fn id_token() -> String {
        let now = unix_now();
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": "standin"});
        let claims = json!({
            "iss": "https://auth.openai.com",
            "aud": ["app_EMoamEEZ73f0CkXaXp7hrann"],
            "sub": "standin-user",
            "email": EMAIL,
            "email_verified": true,
            "iat": now,
            "exp": now + 864000,
            "https://api.openai.com/profile": {"email": EMAIL, "email_verified": true},
            "https://api.openai.com/auth": {
                "chatgpt_account_id": ACCOUNT_ID,
                "chatgpt_plan_type": "plus",
                "chatgpt_user_id": "user-standin",
                "user_id": "user-standin",
            },
        });
        format!(
            "{}.{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes()),
            base64url(b"standin-signature")
        )
    }

    /// Base64url without padding (JWT segments).
    pub(super) fn base64url(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct Answer {
        status: StatusCode,
        content_type: String,
        body: String,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap_or(Value::Null)
        }
    }

    async fn call(
        st: &Arc<ModelStandin>,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(body.to_string())).unwrap();
        let resp = router(st.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            content_type,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    /// SSE events as (name, data); Google's have no name.
    fn events(sse: &str) -> Vec<(String, Value)> {
        sse.replace("\r\n", "\n")
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let mut name = String::new();
                let mut data = Value::Null;
                for line in e.lines() {
                    let line = line.trim_end_matches('\r');
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).unwrap();
                    }
                }
                (name, data)
            })
            .collect()
    }

    fn names(evs: &[(String, Value)]) -> Vec<&str> {
        evs.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn claude_body(messages: Value) -> String {
        json!({"model": "claude-x", "max_tokens": 100, "stream": true, "messages": messages})
            .to_string()
    }

    const CLAUDE_KEY: (&str, &str) = ("x-api-key", "sk-test");

    #[tokio::test]
    async fn anthropic_streams_a_plain_answer() {
        let st = Arc::new(ModelStandin::new());
        let body = claude_body(json!([{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>\nnotes\n</system-reminder>\n"},
            {"type": "text", "text": "hello there"},
        ]}]));
        let r = call(&st, "POST", "/v1/messages?beta=true", &[CLAUDE_KEY], &body).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.content_type, "text/event-stream");
        let evs = events(&r.body);
        let n = names(&evs);
        assert_eq!(n[..3], ["message_start", "ping", "content_block_start"]);
        assert_eq!(
            n[n.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        let deltas: Vec<&str> = evs
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
            .collect();
        assert!(deltas.len() >= 3, "{deltas:?}");
        assert_eq!(deltas.concat(), "standin answer 1: hello there");
        let end = &evs[evs.len() - 2].1;
        assert_eq!(end["delta"]["stop_reason"], "end_turn");
        assert_eq!(end["usage"]["input_tokens"], 10);
        assert_eq!(end["usage"]["output_tokens"], 5);
        assert_eq!(evs[0].1["message"]["usage"]["input_tokens"], 10);
    }

    #[tokio::test]
    async fn anthropic_counts_turns_and_answers_without_streaming() {
        let st = Arc::new(ModelStandin::new());
        let body = json!({"model": "m", "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": "second"},
        ]});
        let r = call(
            &st,
            "POST",
            "/v1/messages",
            &[CLAUDE_KEY],
            &body.to_string(),
        )
        .await;
        let m = r.json();
        assert_eq!(m["type"], "message");
        assert_eq!(m["content"][0]["text"], "standin answer 2: second");
        assert_eq!(m["usage"]["input_tokens"], 20);
        let r = call(
            &st,
            "POST",
            "/v1/messages/count_tokens",
            &[CLAUDE_KEY],
            &body.to_string(),
        )
        .await;
        assert_eq!(r.json(), json!({"input_tokens": 20}));
    }

    #[tokio::test]
    async fn anthropic_tool_round_trip() {
        let st = Arc::new(ModelStandin::new());
        let ask = json!({"role": "user", "content": "please RUN_SHELL: echo hi-from-tool\nthanks"});
        let r = call(
            &st,
            "POST",
            "/v1/messages",
            &[CLAUDE_KEY],
            &claude_body(json!([ask])),
        )
        .await;
        let evs = events(&r.body);
        let start = &evs
            .iter()
            .find(|(n, _)| n == "content_block_start")
            .unwrap()
            .1;
        assert_eq!(start["content_block"]["type"], "tool_use");
        assert_eq!(start["content_block"]["name"], "Bash");
        let id = start["content_block"]["id"].as_str().unwrap().to_string();
        let json: String = evs
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, d)| {
                assert_eq!(d["delta"]["type"], "input_json_delta");
                d["delta"]["partial_json"].as_str().unwrap().to_string()
            })
            .collect();
        let input: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(input["command"], "echo hi-from-tool");
        let end = &evs.iter().find(|(n, _)| n == "message_delta").unwrap().1;
        assert_eq!(end["delta"]["stop_reason"], "tool_use");

        let messages = json!([
            ask,
            {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "Bash", "input": input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "hi-from-tool\nmore", "is_error": false}]},
        ]);
        let r = call(
            &st,
            "POST",
            "/v1/messages",
            &[CLAUDE_KEY],
            &claude_body(messages),
        )
        .await;
        let text: String = events(&r.body)
            .iter()
            .filter_map(|(_, d)| d["delta"]["text"].as_str().map(str::to_string))
            .collect();
        assert_eq!(text, "standin answer 1: tool said: hi-from-tool");
    }

    #[tokio::test]
    async fn anthropic_errors() {
        let st = Arc::new(ModelStandin::new());
        let body = claude_body(json!([{"role": "user", "content": "hi"}]));
        let r = call(
            &st,
            "POST",
            "/v1/messages",
            &[("x-api-key", BAD_KEY)],
            &body,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["type"], "error");
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        let r = call(&st, "POST", "/v1/messages", &[CLAUDE_KEY], "{not json").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"));
    }

    fn codex_input(text: &str) -> Vec<Value> {
        vec![
            json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]}),
            json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>\n  <cwd>/w</cwd>\n</environment_context>"}]}),
            json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}),
        ]
    }

    const CODEX_KEY: (&str, &str) = ("authorization", "Bearer sk-codex");

    #[tokio::test]
    async fn openai_streams_a_plain_answer() {
        let st = Arc::new(ModelStandin::new());
        let body = json!({"model": "gpt-x", "stream": true, "input": codex_input("hello")});
        let r = call(
            &st,
            "POST",
            "/v1/responses",
            &[CODEX_KEY],
            &body.to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.content_type, "text/event-stream");
        let evs = events(&r.body);
        let n = names(&evs);
        assert_eq!(
            n[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        assert_eq!(
            n[n.len() - 2..],
            ["response.output_item.done", "response.completed"]
        );
        let deltas: Vec<&str> = evs
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        assert!(deltas.len() >= 3);
        assert_eq!(deltas.concat(), "standin answer 1: hello");
        let done = &evs.last().unwrap().1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["input_tokens"], 10);
        assert_eq!(done["usage"]["output_tokens"], 5);
        assert_eq!(
            done["output"][0]["content"][0]["text"],
            "standin answer 1: hello"
        );
        let seq: Vec<u64> = evs
            .iter()
            .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
            .collect();
        assert!(seq.windows(2).all(|w| w[1] == w[0] + 1));
    }

    fn code_mode_tools() -> Value {
        json!({"type": "additional_tools", "role": "developer", "tools": [{
        "type": "namespace", "name": "functions", "tools": [
            {"type": "custom", "name": "exec", "description": "… `await tools.exec_command(...)` …"},
            {"type": "function", "name": "wait", "parameters": {"type": "object", "properties": {}}},
        ]}]})
    }

    #[tokio::test]
    async fn openai_tool_round_trip_in_code_mode() {
        let st = Arc::new(ModelStandin::new());
        let mut input = vec![code_mode_tools()];
        input.extend(codex_input("RUN_SHELL: echo hi-from-tool"));
        let body = json!({"model": "gpt-x", "stream": true, "input": input});
        let r = call(
            &st,
            "POST",
            "/v1/responses",
            &[CODEX_KEY],
            &body.to_string(),
        )
        .await;
        let evs = events(&r.body);
        assert!(names(&evs).contains(&"response.custom_tool_call_input.delta"));
        let item = evs
            .iter()
            .find(|(n, _)| n == "response.output_item.done")
            .unwrap()
            .1["item"]
            .clone();
        assert_eq!(item["type"], "custom_tool_call");
        assert_eq!(item["name"], "exec");
        let js = item["input"].as_str().unwrap();
        assert!(
            js.contains("tools.exec_command({cmd: \"echo hi-from-tool\"})"),
            "{js}"
        );

        input.push(item.clone());
        input.push(json!({"type": "custom_tool_call_output", "call_id": item["call_id"], "output": [
            {"type": "input_text", "text": "Script completed\nWall time 0.2 seconds\nOutput:\n"},
            {"type": "input_text", "text": "hi-from-tool\n"},
        ]}));
        let body = json!({"model": "gpt-x", "stream": true, "input": input});
        let r = call(
            &st,
            "POST",
            "/v1/responses",
            &[CODEX_KEY],
            &body.to_string(),
        )
        .await;
        let done = events(&r.body).last().unwrap().1.clone();
        assert_eq!(
            done["response"]["output"][0]["content"][0]["text"],
            "standin answer 1: tool said: hi-from-tool"
        );
    }

    #[tokio::test]
    async fn openai_tool_call_with_function_tools() {
        let tools = vec![json!({"type": "function", "name": "shell_command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}})];
        let (name, fields) = openai::shell_call(&tools, "ls");
        assert_eq!(name, "shell_command");
        assert_eq!(fields["type"], "function_call");
        assert_eq!(fields["arguments"], json!({"command": "ls"}).to_string());
        let tools = vec![json!({"type": "function", "name": "shell",
            "parameters": {"type": "object", "properties": {"command": {"type": "array"}}}})];
        let (_, fields) = openai::shell_call(&tools, "ls");
        assert_eq!(
            fields["arguments"],
            json!({"command": ["bash", "-lc", "ls"]}).to_string()
        );

        let st = Arc::new(ModelStandin::new());
        let body = json!({"model": "m", "stream": true, "tools": [{"type": "function", "name": "exec_command",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}],
            "input": codex_input("RUN_SHELL: pwd")});
        let r = call(
            &st,
            "POST",
            "/v1/responses",
            &[CODEX_KEY],
            &body.to_string(),
        )
        .await;
        let evs = events(&r.body);
        assert!(names(&evs).contains(&"response.function_call_arguments.delta"));
        let item = &evs
            .iter()
            .find(|(n, _)| n == "response.output_item.done")
            .unwrap()
            .1["item"];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["name"], "exec_command");
        assert_eq!(item["arguments"], json!({"cmd": "pwd"}).to_string());
    }

    #[tokio::test]
    async fn openai_errors() {
        let st = Arc::new(ModelStandin::new());
        let body = json!({"model": "m", "stream": true, "input": "hi"}).to_string();
        let r = call(
            &st,
            "POST",
            "/v1/responses",
            &[("authorization", "Bearer bad-key")],
            &body,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        let r = call(
            &st,
            "GET",
            "/v1/responses",
            &[("authorization", "Bearer bad-key")],
            "",
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "the WebSocket upgrade is refused too"
        );
        let r = call(&st, "GET", "/v1/responses", &[CODEX_KEY], "").await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "a GET that is no upgrade"
        );
        let r = call(&st, "POST", "/v1/responses", &[CODEX_KEY], "[1]").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn openai_websocket_messages_continue_the_connection() {
        let st = ModelStandin::new();
        let ctx = openai::WsContext {
            path: "/v1/responses".into(),
            query: None,
            key: Some("sk-codex".into()),
        };
        let mut prev = None;
        let warm = json!({"type": "response.create", "model": "m", "generate": false, "input": []});
        let evs = openai::ws_message(&st, &ctx, &warm.to_string(), &mut prev);
        let kinds: Vec<&str> = evs.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.completed"
            ]
        );
        let warm_id = evs[2]["response"]["id"].as_str().unwrap().to_string();

        let turn = json!({"type": "response.create", "model": "m", "previous_response_id": warm_id,
            "input": codex_input("RUN_SHELL: echo hi")});
        let evs = openai::ws_message(&st, &ctx, &turn.to_string(), &mut prev);
        let done = evs.last().unwrap();
        assert_eq!(done["type"], "response.completed");
        let call = &done["response"]["output"][0];
        assert_eq!(
            call["name"], "shell",
            "no shell tool offered: the plain `shell` function"
        );

        // Only the tool's output, continuing the last response.
        let out = json!({"type": "response.create", "model": "m",
            "previous_response_id": done["response"]["id"],
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "hi\n"}]});
        let evs = openai::ws_message(&st, &ctx, &out.to_string(), &mut prev);
        let text = &evs.last().unwrap()["response"]["output"][0]["content"][0]["text"];
        assert_eq!(text, "standin answer 1: tool said: hi");

        assert!(
            openai::ws_message(&st, &ctx, r#"{"type":"response.processed"}"#, &mut prev).is_empty()
        );
        let gone =
            json!({"type": "response.create", "previous_response_id": "resp_nope", "input": []});
        let evs = openai::ws_message(&st, &ctx, &gone.to_string(), &mut prev);
        assert_eq!(evs[0]["type"], "error");
        assert_eq!(evs[0]["status"], 400);
        assert_eq!(evs[0]["error"]["code"], "previous_response_not_found");
        let evs = openai::ws_message(&st, &ctx, "nope", &mut prev);
        assert_eq!(evs[0]["status"], 400);

        let log = st.requests();
        let turns: Vec<usize> = log.iter().map(|r| r.user_turns).collect();
        assert_eq!(turns, [0, 1, 1, 0, 0]);
        assert!(log
            .iter()
            .all(|r| r.method == "WS" && r.api_key.as_deref() == Some("sk-codex")));
    }

    fn gemini_body(contents: Value) -> String {
        json!({"contents": contents, "generationConfig": {"temperature": 1}}).to_string()
    }

    fn session_context() -> Value {
        json!({"text": "<session_context>\nThis is the Gemini CLI.\n</session_context>"})
    }

    const GEMINI_KEY: (&str, &str) = ("x-goog-api-key", "AIza-test");

    #[tokio::test]
    async fn gemini_streams_a_plain_answer() {
        let st = Arc::new(ModelStandin::new());
        let body = gemini_body(json!([
            {"role": "user", "parts": [session_context(), {"text": "hello"}]},
            {"role": "model", "parts": [{"text": "standin answer 1: hello"}]},
            {"role": "user", "parts": [{"text": "again"}]},
        ]));
        let uri = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse";
        let r = call(&st, "POST", uri, &[GEMINI_KEY], &body).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.content_type, "text/event-stream");
        assert!(r.body.starts_with("data: {"));
        let evs = events(&r.body);
        assert!(evs.len() >= 3);
        assert!(evs.iter().all(|(n, _)| n.is_empty()));
        let text: String = evs
            .iter()
            .map(|(_, d)| {
                assert_eq!(d["candidates"][0]["content"]["role"], "model");
                d["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(text, "standin answer 2: again");
        let last = &evs.last().unwrap().1;
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(
            last["usageMetadata"],
            json!({"promptTokenCount": 20, "candidatesTokenCount": 5, "totalTokenCount": 25})
        );
        // Without alt=sse: a JSON array of the same chunks.
        let uri = "/v1beta/models/gemini-x:streamGenerateContent";
        let r = call(&st, "POST", uri, &[GEMINI_KEY], &body).await;
        assert_eq!(r.json().as_array().map(Vec::len), Some(evs.len()));
    }

    #[tokio::test]
    async fn gemini_tool_round_trip() {
        let st = Arc::new(ModelStandin::new());
        let ask = json!({"role": "user", "parts": [session_context(), {"text": "RUN_SHELL: echo hi-from-tool"}]});
        let uri = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse";
        let r = call(&st, "POST", uri, &[GEMINI_KEY], &gemini_body(json!([ask]))).await;
        let evs = events(&r.body);
        let call_part = &evs[0].1["candidates"][0]["content"]["parts"][0]["functionCall"];
        assert_eq!(call_part["name"], "run_shell_command");
        assert_eq!(call_part["args"]["command"], "echo hi-from-tool");
        assert_eq!(
            evs.last().unwrap().1["usageMetadata"]["promptTokenCount"],
            10
        );

        let contents = json!([
            ask,
            {"role": "model", "parts": [{"functionCall": call_part}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "run_shell_command", "response": {
                "output": "<untrusted_context>\nOutput: hi-from-tool\nProcess Group PGID: 7\n</untrusted_context>"}}}]},
        ]);
        let r = call(&st, "POST", uri, &[GEMINI_KEY], &gemini_body(contents)).await;
        let text: String = events(&r.body)
            .iter()
            .filter_map(|(_, d)| {
                d["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text, "standin answer 1: tool said: hi-from-tool");
    }

    #[tokio::test]
    async fn gemini_json_requests_get_json() {
        let st = Arc::new(ModelStandin::new());
        let body = json!({
            "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": {
                "type": "OBJECT", "properties": {
                    "complexity_reasoning": {"type": "STRING"},
                    "complexity_score": {"type": "INTEGER"},
                    "next_speaker": {"type": "string", "enum": ["model", "user"]},
                    "confidence": {"type": "number"},
                }}},
        });
        let uri = "/v1beta/models/flash-lite:generateContent?key=AIza-test";
        let r = call(&st, "POST", uri, &[], &body.to_string()).await;
        assert_eq!(r.status, StatusCode::OK);
        let text = r.json()["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            answer,
            json!({"complexity_reasoning": "standin", "complexity_score": 1, "next_speaker": "user", "confidence": 0.0})
        );
        assert_eq!(st.requests()[0].api_key.as_deref(), Some("AIza-test"));
        let uri = "/v1beta/models/flash-lite:countTokens";
        let r = call(&st, "POST", uri, &[GEMINI_KEY], &body.to_string()).await;
        assert_eq!(r.json(), json!({"totalTokens": 10}));
    }

    #[tokio::test]
    async fn gemini_errors() {
        let st = Arc::new(ModelStandin::new());
        let body = gemini_body(json!([{"role": "user", "parts": [{"text": "hi"}]}]));
        for (uri, headers) in [
            (
                "/v1beta/models/g:streamGenerateContent?alt=sse&key=bad-key",
                vec![],
            ),
            (
                "/v1beta/models/g:generateContent",
                vec![("x-goog-api-key", BAD_KEY)],
            ),
        ] {
            let r = call(&st, "POST", uri, &headers, &body).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            assert_eq!(r.json()["error"]["code"], 401);
            assert_eq!(r.json()["error"]["status"], "UNAUTHENTICATED");
        }
        let r = call(
            &st,
            "POST",
            "/v1beta/models/g:generateContent",
            &[GEMINI_KEY],
            "{",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");
        let r = call(
            &st,
            "POST",
            "/v1beta/models/g:embedContent",
            &[GEMINI_KEY],
            &body,
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json()["error"]["status"], "NOT_FOUND");
    }

    #[tokio::test]
    async fn the_request_log() {
        let st = Arc::new(ModelStandin::new());
        let body = claude_body(json!([{"role": "user", "content": "hi"}]));
        call(&st, "POST", "/v1/messages?beta=true", &[CLAUDE_KEY], &body).await;
        let r = call(
            &st,
            "GET",
            "/v1/models",
            &[("authorization", "Bearer k")],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /v1/models"));
        let r = call(&st, "PUT", "/v1/messages", &[CLAUDE_KEY], "x").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(
            r.json()["type"],
            "error",
            "Anthropic's shape for an Anthropic request"
        );
        let log = st.requests();
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].method, "POST");
        assert_eq!(log[0].path, "/v1/messages");
        assert_eq!(log[0].query.as_deref(), Some("beta=true"));
        assert_eq!(log[0].provider, Some(Provider::ClaudeCode));
        assert_eq!(log[0].api_key.as_deref(), Some("sk-test"));
        assert_eq!(log[0].user_turns, 1);
        assert_eq!(log[0].body["messages"][0]["content"], "hi");
        assert_eq!(
            (log[1].path.as_str(), log[1].provider),
            ("/v1/models", Some(Provider::Codex))
        );
        assert_eq!(log[1].body, Value::Null);
        assert_eq!(log[2].body, json!("x"));
    }

    #[tokio::test]
    async fn token_refreshes_rotate() {
        let st = Arc::new(ModelStandin::new());
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let r = call(
            &st,
            "POST",
            "/oauth/token",
            &form,
            "grant_type=refresh_token&refresh_token=r%2D0&client_id=app",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["access_token"], "standin-access-1");
        assert_eq!(r.json()["refresh_token"], "standin-refresh-1");
        assert_eq!(r.json()["id_token"].as_str().unwrap().split('.').count(), 3);
        let body = json!({"grant_type": "refresh_token", "refresh_token": "standin-refresh-1"})
            .to_string();
        let r = call(&st, "POST", "/oauth/token", &[], &body).await;
        assert_eq!(r.json()["access_token"], "standin-access-2");
        assert_eq!(st.refreshes(), 2);
        let log = st.requests();
        assert_eq!(log[0].api_key.as_deref(), Some("r-0"));
        assert_eq!(log[1].api_key.as_deref(), Some("standin-refresh-1"));
        let body = json!({"grant_type": "refresh_token", "refresh_token": BAD_KEY}).to_string();
        let r = call(&st, "POST", "/oauth/token", &[], &body).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["error"]["code"], "refresh_token_invalidated");
        let r = call(&st, "POST", "/oauth/token", &[], "{}").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(st.refreshes(), 2);

        let headers = [
            ("authorization", "Bearer standin-access-2"),
            ("chatgpt-account-id", "acct-9"),
        ];
        let r = call(&st, "GET", "/backend-api/wham/accounts/check", &headers, "").await;
        assert_eq!(r.json()["accounts"][0]["id"], "acct-9");
        assert_eq!(
            r.json()["accounts"][0]["account_routing_override"],
            "NO_CONSTRAINT"
        );
    }

    fn base64url_decode(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let sextets: Vec<u32> = s
            .bytes()
            .map(|c| ALPHABET.iter().position(|&a| a == c).unwrap() as u32)
            .collect();
        let mut out = Vec::new();
        for chunk in sextets.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0, |n, (i, v)| n | v << (18 - 6 * i));
            out.extend(&n.to_be_bytes()[1..chunk.len()]);
        }
        out
    }

    #[test]
    fn id_token_claims() {
        assert_eq!(oauth::base64url(b"hello"), "aGVsbG8");
        assert_eq!(oauth::base64url(b"hi?>"), "aGk_Pg");
        assert_eq!(base64url_decode("aGk_Pg"), b"hi?>");
        let token = oauth::id_token();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(&base64url_decode(parts[1])).unwrap();
        assert_eq!(claims["email"], "standin@example.test");
        let auth = &claims["https://api.openai.com/auth"];
        assert_eq!(auth["chatgpt_account_id"], oauth::ACCOUNT_ID);
        assert_eq!(auth["chatgpt_plan_type"], "plus");
        assert!(claims["exp"].as_u64().unwrap() > unix_now());
    }

    #[test]
    fn tool_output_first_lines() {
        assert_eq!(first_output_line("hi\nthere"), "hi");
        assert_eq!(first_output_line("\n\n  hi \n"), "hi");
        assert_eq!(first_output_line("Exit code: 0\nOutput:\nhi\n"), "hi");
        assert_eq!(
            first_output_line("<untrusted_context>\nOutput: hi\nPGID: 1\n</untrusted_context>"),
            "hi"
        );
        assert_eq!(
            first_output_line("Command: x\nStdout: hi\nStderr: (empty)"),
            "hi"
        );
        assert_eq!(
            first_output_line(r#"{"output":"hi\n","metadata":{"exit_code":0}}"#),
            "hi"
        );
        assert_eq!(first_output_line(""), "");
        assert_eq!(
            shell_request("do RUN_SHELL:  ls -l \nthen"),
            Some("ls -l".to_string())
        );
        assert_eq!(shell_request("RUN_SHELL:"), None);
        assert!(is_injected("<system-reminder>\nx\n</system-reminder>\n"));
        assert!(!is_injected("hello <b>"));
        assert!(pieces("standin answer 1: x").len() >= 3);
    }
}
