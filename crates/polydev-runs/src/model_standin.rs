//! A stand-in for the three model APIs the CLIs talk to, on one HTTP server,
//! so that the real CLIs run against it unmodified, pointed there by
//! configuration only. Deterministic, so tests can assert on what the CLIs
//! print and on what reached the server ([`ModelStandin::requests`]).
//!
//! (doc filled in below)

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
    /// Whose API the path belongs to (`None`: unknown path, token endpoint).
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
        .route("/v1/messages/count_tokens", post_only(anthropic::count_tokens))
        .route("/v1/responses", responses_route())
        .route("/backend-api/codex/responses", responses_route())
        .route("/v1beta/models/{target}", post_only(gemini::call))
        .route("/oauth/token", post_only(oauth::token))
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
            (None, _) => Reply::Text(format!(
                "standin answer {n}: {}",
                echo(&self.last_user_text)
            )),
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

/// Splits text into at least three pieces (fewer only for under 3 chars).
fn pieces(text: &str) -> Vec<String> {
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
        Some(Provider::ClaudeCode) => anthropic::error(StatusCode::NOT_FOUND, "not_found_error", &msg),
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

    pub(super) fn error(status: StatusCode, kind: &str, message: &str) -> Response {
        json_response(
            status,
            json!({"type": "error", "error": {"type": kind, "message": message}}),
        )
    }

    /// Checks key and body; logs the request either way.
    fn accept(st: &ModelStandin, req: &Incoming) -> Result<(Value, Conversation), Response> {
        let key = api_key(req);
        let body = match req.json() {
            Ok(b) => b,
            Err(e) => {
                st.record(req.log_entry(Some(Provider::ClaudeCode), key, 0));
                return Err(error(StatusCode::BAD_REQUEST, "invalid_request_error", &e));
            }
        };
        let conv = conversation(&body);
        st.record(req.log_entry(Some(Provider::ClaudeCode), key.clone(), conv.user_turns));
        match key.as_deref() {
            None => Err(error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "x-api-key header is required",
            )),
            Some(BAD_KEY) => Err(error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
            )),
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
        let req = Incoming { method, uri, headers, body };
        match accept(&st, &req) {
            Ok((_, conv)) => json_response(StatusCode::OK, json!({"input_tokens": conv.input_tokens()})),
            Err(r) => r,
        }
    }

    pub(super) async fn messages(
        State(st): State<Arc<ModelStandin>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let req = Incoming { method, uri, headers, body };
        let (body, conv) = match accept(&st, &req) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let model = body["model"].as_str().unwrap_or("claude-standin").to_string();
        let id = st.next_id();
        let block = content_block(&conv.reply(), id);
        if body["stream"].as_bool().unwrap_or(false) {
            sse_response(stream(&model, id, &block, &conv))
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
            ("message_start", json!({"type": "message_start", "message": start})),
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
        events.push(("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
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

    pub(super) fn error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
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
        let req = Incoming { method, uri, headers, body };
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
            sse_response(sse_named(&events))
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
        let req = Incoming { method, uri, headers, body: Bytes::new() };
        let key = req.bearer();
        st.record(req.log_entry(Some(Provider::Codex), key.clone(), 0));
        if let Some((status, err)) = refusal(key.as_deref()) {
            return json_response(status, err);
        }
        let Ok(ws) = ws else {
            let msg = format!("GET {} needs a WebSocket upgrade; use POST for HTTP", req.uri.path());
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
            for event in ws_message(&st, &ctx, &text, &mut prev) {
                if socket.send(Message::Text(event.to_string().into())).await.is_err() {
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
        let mut body = match serde_json::from_str::<Value>(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                st.record(log(Value::String(text.to_string()), 0));
                let msg = "the WebSocket message is not a JSON object";
                return vec![ws_error(StatusCode::BAD_REQUEST, error_body("invalid_request_error", None, msg))];
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
        st.record(log(body.clone(), conv.user_turns));
        if let Some(o) = body.as_object_mut() {
            o.remove("type");
        }
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
            let err = error_body("invalid_request_error", Some("previous_response_not_found"), &msg);
            return Err(ws_error(StatusCode::BAD_REQUEST, err));
        };
        let mut full = body.clone();
        let mut items = p.items.clone();
        items.extend(input_items(body));
        full["input"] = Value::Array(items);
        Ok(full)
    }

    /// The response object and its stream events.
    fn answer(st: &ModelStandin, body: &Value, conv: &Conversation) -> (Value, Vec<(&'static str, Value)>) {
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
            return (name.to_string(), json!({"type": "function_call", "arguments": args.to_string()}));
        }
        if find("exec").is_some_and(|t| t["type"] == "custom") {
            let js = format!(
                "const r = await tools.exec_command({{cmd: {}}});\ntext(r.output);\n",
                Value::String(cmd.to_string())
            );
            return ("exec".to_string(), json!({"type": "custom_tool_call", "input": js}));
        }
        let args = json!({"command": ["bash", "-lc", cmd]});
        ("shell".to_string(), json!({"type": "function_call", "arguments": args.to_string()}))
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
                let prefix = if fields["type"] == "custom_tool_call" { "ctc" } else { "fc" };
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
            ("response.created", json!({"type": "response.created", "response": created})),
            ("response.in_progress", json!({"type": "response.in_progress", "response": created})),
        ];
        if let Some(item) = item {
            item_events(&mut events, item);
        }
        events.push(("response.completed", json!({"type": "response.completed", "response": response})));
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
    fn input_events(events: &mut Vec<(&'static str, Value)>, item: &Value, kind: &str, field: &str) {
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
            events.push((delta, json!({"type": delta, "item_id": item["id"], "output_index": 0, "delta": p})));
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
        req.header("x-goog-api-key").or_else(|| req.query_param("key"))
    }

    fn status_name(status: StatusCode) -> &'static str {
        match status {
            StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
            StatusCode::FORBIDDEN => "PERMISSION_DENIED",
            StatusCode::NOT_FOUND => "NOT_FOUND",
            _ => "INVALID_ARGUMENT",
        }
    }

    pub(super) fn error(status: StatusCode, message: &str) -> Response {
        json_response(
            status,
            json!({"error": {"code": status.as_u16(), "message": message, "status": status_name(status)}}),
        )
    }

    fn accept(st: &ModelStandin, req: &Incoming) -> Result<(Value, Conversation), Response> {
        let key = api_key(req);
        let body = match req.json() {
            Ok(b) => b,
            Err(e) => {
                st.record(req.log_entry(Some(Provider::GeminiCli), key, 0));
                return Err(error(StatusCode::BAD_REQUEST, &e));
            }
        };
        let conv = conversation(&body);
        st.record(req.log_entry(Some(Provider::GeminiCli), key.clone(), conv.user_turns));
        match key.as_deref() {
            None => Err(error(
                StatusCode::FORBIDDEN,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            )),
            Some(BAD_KEY) => Err(error(
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
        let req = Incoming { method, uri, headers, body };
        let Some((model, action)) = target.split_once(':') else {
            return unknown(State(st), req.method, req.uri, req.headers, req.body).await;
        };
        let (model, action) = (model.to_string(), action.to_string());
        if !["streamGenerateContent", "generateContent", "countTokens"].contains(&action.as_str()) {
            return unknown(State(st), req.method, req.uri, req.headers, req.body).await;
        }
        let (body, conv) = match accept(&st, &req) {
            Ok(x) => x,
            Err(r) => return r,
        };
        match action.as_str() {
            "countTokens" => json_response(StatusCode::OK, json!({"totalTokens": conv.input_tokens()})),
            "generateContent" => json_response(StatusCode::OK, whole(&body, &model, &conv, st.next_id())),
            _ => {
                let chunks = chunks(&body, &model, &conv, st.next_id());
                if req.query_param("alt").as_deref() == Some("sse") {
                    sse_response(sse_data(&chunks))
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

    /// A value that fits a (JSON or OpenAPI) schema; `next_speaker` is the
    /// user, so the CLI ends its turn.
    pub(super) fn fill(schema: &Value, key: &str) -> Value {
        if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
            if key == "next_speaker" {
                return json!("user");
            }
            return first.clone();
        }
        let kind = schema["type"].as_str().unwrap_or("object").to_ascii_lowercase();
        match kind.as_str() {
            "object" => {
                let props = schema["properties"].as_object().cloned().unwrap_or_default();
                let filled: Map<String, Value> =
                    props.iter().map(|(k, s)| (k.clone(), fill(s, k))).collect();
                Value::Object(filled)
            }
            "array" => json!([]),
            "string" if key == "next_speaker" => json!("user"),
            "string" => json!("standin"),
            "number" | "integer" => json!(0),
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

/// The ChatGPT sign-in's token endpoint (`auth.openai.com/oauth/token`).
mod oauth {
    use super::*;

    pub(super) async fn token(
        State(st): State<Arc<ModelStandin>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let _ = (&st, &method, &uri, &headers, &body);
        StatusCode::NOT_IMPLEMENTED.into_response()
    }
}
