//! Hostile request bodies through the controller's real router: arbitrary
//! bytes, arbitrary JSON and near-valid bodies on every route that reads
//! one, with and without the right content type and key. Each answer must
//! be a success or an error `{"error": {"code", "message"}}` with a 4xx
//! status — or 503 `artifacts_missing` or `egress_off`, since this
//! controller has no kernel, no image and no egress — never another 5xx,
//! never a panic, never a wait.
//!
//! Nothing boots: the kernel and image the configuration names do not
//! exist, so a valid `POST /api/vms` (or a run, or a sign-in) stops at
//! `artifacts_missing`. The application runs in this process and requests
//! go through `Router::oneshot`.
//!
//! Each property runs a bounded number of cases; `POLYDEV_FUZZ_CASES=N`
//! runs N instead. The seed is fixed unless `PROPTEST_RNG_SEED` names
//! another.

use axum::body::Body;
use http_body_util::BodyExt;
use polydev_controller::config::Config;
use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::ServiceExt;

/// The user whose credential, egress and terminal routes are called.
const USER: &str = "alice";
/// A sign-in session recorded in the store, in progress, with no VM.
const SESSION: &str = "as_fuzz";
/// Longest wait for one answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

const OFFER: &str =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
const CANDIDATE: &str = "candidate:1 1 udp 2130706431 192.0.2.1 50000 typ host";

/// `default` cases, or `POLYDEV_FUZZ_CASES`; a fixed seed unless
/// `PROPTEST_RNG_SEED` is set.
fn config(default: u32) -> proptest::test_runner::Config {
    let cases = match std::env::var("POLYDEV_FUZZ_CASES") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("POLYDEV_FUZZ_CASES={v:?} is not a whole number")),
        _ => default,
    };
    let mut c = proptest::test_runner::Config::with_cases(cases);
    if c.rng_seed == RngSeed::Random {
        c.rng_seed = RngSeed::Fixed(0x0070_6f6c_7964_6576);
    }
    // A runner made by hand knows no source file to keep failures beside.
    c.failure_persistence = None;
    c
}

/// A route that reads a body, and for each field of a body it accepts,
/// values it should take or refuse cleanly (the first one valid).
struct Route {
    method: &'static str,
    path: String,
    fields: Vec<(&'static str, Vec<Value>)>,
}

fn routes() -> Vec<Route> {
    let users = || {
        vec![
            json!(USER),
            json!("bob"),
            json!("_pool"),
            json!(".."),
            json!("x".repeat(129)),
        ]
    };
    let providers = || {
        vec![
            json!("codex"),
            json!("claude"),
            json!("gemini"),
            json!("vim"),
        ]
    };
    let route = |method, path: &str, fields| Route {
        method,
        path: path.to_string(),
        fields,
    };
    vec![
        route(
            "POST",
            "/api/vms",
            vec![
                ("type", vec![json!("cli"), json!("browser"), json!("qemu")]),
                ("userId", users()),
            ],
        ),
        route(
            "POST",
            "/api/auth/start",
            vec![
                ("userId", users()),
                ("provider", providers()),
                (
                    "webrtcOffer",
                    vec![
                        json!(OFFER),
                        json!({"type": "offer", "sdp": OFFER}),
                        json!({"offer": {"offer": 1}}),
                        Value::Null,
                    ],
                ),
            ],
        ),
        route(
            "POST",
            &format!("/api/auth/session/{SESSION}/code"),
            vec![(
                "code",
                vec![
                    json!("4/0Ab-code"),
                    json!(""),
                    json!("a\u{7}b"),
                    json!("c".repeat(5000)),
                ],
            )],
        ),
        route(
            "PUT",
            "/api/vms/vm_missing/egress",
            vec![
                ("internet", vec![json!(true), json!(false)]),
                (
                    "allowCidrs",
                    vec![
                        json!(["10.0.0.0/8"]),
                        json!(["::/0"]),
                        json!(["300.1.1.1/33"]),
                    ],
                ),
                ("denyCidrs", vec![json!(["192.0.2.0/24"]), json!([""])]),
                (
                    "allowDomains",
                    vec![
                        json!(["example.com", "*.example.com"]),
                        json!(["*"]),
                        json!([".."]),
                    ],
                ),
                ("denyDomains", vec![json!(["ads.example.com"]), json!([""])]),
            ],
        ),
        route(
            "PUT",
            &format!("/api/users/{USER}/egress"),
            vec![
                (
                    "proxy",
                    vec![
                        json!("http://proxy.test:3128"),
                        json!("socks5://u:p@proxy.test:1080"),
                        json!("ftp://x"),
                        json!(""),
                    ],
                ),
                (
                    "sourceAddress",
                    vec![json!("auto"), json!("192.0.2.7"), json!("nowhere")],
                ),
            ],
        ),
        route(
            "POST",
            "/api/runs",
            vec![
                ("userId", users()),
                ("provider", providers()),
                (
                    "prompt",
                    vec![
                        json!("say hello"),
                        json!(""),
                        json!("a\u{0}b"),
                        json!("p".repeat(70_000)),
                    ],
                ),
                ("model", vec![json!("gpt-5"), json!("a b"), json!("")]),
                ("conversationId", vec![json!("c-1"), json!("../x")]),
                (
                    "timeoutSecs",
                    vec![json!(60), json!(0), json!(u64::MAX), json!(-1), json!(1.5)],
                ),
            ],
        ),
        route(
            "PUT",
            &format!("/api/credentials/{USER}/codex"),
            vec![(
                "apiKey",
                vec![
                    json!("sk-fuzz"),
                    json!(""),
                    json!("a b"),
                    json!("k".repeat(10_000)),
                ],
            )],
        ),
        route(
            "PUT",
            &format!("/api/credentials/{USER}/nothing"),
            vec![("apiKey", vec![json!("sk-fuzz")])],
        ),
        route(
            "POST",
            "/api/keys",
            vec![(
                "name",
                vec![
                    json!("fuzz"),
                    json!(""),
                    json!("x\u{1}"),
                    json!("n".repeat(101)),
                ],
            )],
        ),
        route(
            "POST",
            &format!("/api/webrtc/session/{SESSION}/offer"),
            vec![
                ("type", vec![json!("offer"), json!("answer")]),
                (
                    "sdp",
                    vec![
                        json!(OFFER),
                        json!("v=0\r\n"),
                        json!(format!("{OFFER}a=x\u{0}\r\n")),
                    ],
                ),
                (
                    "offer",
                    vec![
                        json!(OFFER),
                        json!({"sdp": OFFER}),
                        json!({"offer": {"offer": OFFER}}),
                    ],
                ),
            ],
        ),
        route(
            "POST",
            "/api/webrtc/session/as_missing/offer",
            vec![("sdp", vec![json!(OFFER)])],
        ),
        route(
            "POST",
            &format!("/api/webrtc/session/{SESSION}/candidates"),
            vec![
                (
                    "candidate",
                    vec![
                        json!(CANDIDATE),
                        json!(""),
                        json!("rm -rf /"),
                        json!(format!("{CANDIDATE}\n")),
                    ],
                ),
                ("sdpMid", vec![json!("0"), json!("m".repeat(65)), json!(7)]),
                ("sdpMLineIndex", vec![json!(0), json!(-1), json!(u64::MAX)]),
                (
                    "candidates",
                    vec![
                        json!([{"candidate": CANDIDATE}]),
                        json!([{}]),
                        json!("x"),
                        json!(vec![json!({"candidate": CANDIDATE}); 100]),
                    ],
                ),
            ],
        ),
        route(
            "POST",
            &format!("/api/users/{USER}/terminal/token"),
            vec![("ttlSecs", vec![json!(60)])],
        ),
    ]
}

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body for `route`: each of its fields perhaps missing, with its valid
/// value, another of its values or anything, and perhaps a field it does
/// not know.
fn near_valid(route: &Route) -> BoxedStrategy<Vec<u8>> {
    let fields: Vec<_> = route
        .fields
        .iter()
        .map(|(k, values)| {
            let k = k.to_string();
            let value = prop_oneof![
                6 => Just(values[0].clone()),
                3 => prop::sample::select(values.clone()),
                1 => any_json(),
            ];
            proptest::option::weighted(0.9, value).prop_map(move |v| v.map(|v| (k.clone(), v)))
        })
        .collect();
    let extra = proptest::option::weighted(0.1, ("[a-zA-Z]{1,10}", any_json()));
    (fields, extra)
        .prop_map(|(fields, extra)| {
            let mut o: serde_json::Map<String, Value> = fields.into_iter().flatten().collect();
            if let Some((k, v)) = extra {
                o.insert(k, v);
            }
            Value::Object(o).to_string().into_bytes()
        })
        .boxed()
}

/// How a request presents itself.
#[derive(Debug, Clone)]
struct Request {
    route: usize,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    key: Key,
}

/// The credentials a request carries.
#[derive(Debug, Clone)]
enum Key {
    Valid,
    Missing,
    Other(String),
}

fn request(body: impl Strategy<Value = (usize, Vec<u8>)>) -> impl Strategy<Value = Request> {
    let content_type = prop_oneof![
        16 => Just(Some("application/json")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(None),
        1 => Just(Some("text/plain")),
    ];
    let key = prop_oneof![
        20 => Just(Key::Valid),
        1 => Just(Key::Missing),
        1 => "[!-~]{0,40}".prop_map(Key::Other),
    ];
    (body, content_type, key).prop_map(|((route, body), content_type, key)| Request {
        route,
        body,
        content_type,
        key,
    })
}

/// The controller under test, in this process.
struct Controller {
    app: axum::Router,
    key: String,
    routes: Vec<Route>,
    /// Requests answered with a success so far.
    successes: AtomicUsize,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Controller {
    fn start() -> Controller {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (app, key) = rt
            .block_on(Self::app(dir.path()))
            .expect("the controller starts");
        let c = Controller {
            app,
            key,
            routes: routes(),
            successes: AtomicUsize::new(0),
            rt,
            _dir: dir,
        };
        // The user has a credential, so that a valid run is taken.
        let put = Request {
            route: c.path_index(&format!("/api/credentials/{USER}/codex")),
            body: br#"{"apiKey": "sk-fuzz"}"#.to_vec(),
            content_type: Some("application/json"),
            key: Key::Valid,
        };
        assert_eq!(
            c.send(&put).expect("an answer").0,
            200,
            "storing {USER}'s API key"
        );
        c
    }

    fn path_index(&self, path: &str) -> usize {
        self.routes
            .iter()
            .position(|r| r.path == path)
            .expect("a known route")
    }

    async fn app(dir: &std::path::Path) -> anyhow::Result<(axum::Router, String)> {
        let mut cfg = Config::with_data_dir(dir.join("data"));
        cfg.cache_dir = dir.join("cache");
        cfg.kernel = Some(dir.join("missing/vmlinux"));
        cfg.rootfs = Some(dir.join("missing/rootfs.ext4"));
        cfg.accel = Some(polydev_vmm::accel::Accel::Tcg);
        cfg.vmm = Some(polydev_vmm::VmmKind::Qemu);
        // Every case reaches its handler, not the rate limiter.
        cfg.admission.rate_per_key = u32::MAX;
        cfg.admission.rate_per_user = u32::MAX;
        let rt = polydev_controller::build_runtime(cfg).await?;
        let keyring = polydev_controller::load_keyring(rt.config())?;
        let state = polydev_controller::AppState::new(
            rt.clone(),
            keyring,
            Default::default(),
            Duration::from_secs(600),
            Default::default(),
        );
        let key = polydev_controller::auth::generate();
        rt.store()
            .insert_api_key(&key.key_id, "fuzz", &key.hash)
            .await?;
        rt.store()
            .insert_auth_session(
                SESSION,
                USER,
                polydev_core::auth::Provider::Codex,
                polydev_core::vm::now_ms() + 3_600_000,
            )
            .await?;
        Ok((polydev_controller::app(state), key.secret))
    }

    /// Sends `r`; its status and body.
    fn send(&self, r: &Request) -> Result<(u16, Vec<u8>), TestCaseError> {
        let route = &self.routes[r.route];
        let mut b = axum::http::Request::builder()
            .method(route.method)
            .uri(&route.path);
        if let Some(t) = r.content_type {
            b = b.header("content-type", t);
        }
        match &r.key {
            Key::Valid => b = b.header("authorization", format!("Bearer {}", self.key)),
            Key::Missing => {}
            Key::Other(k) => b = b.header("authorization", format!("Bearer {k}")),
        }
        let req = b.body(Body::from(r.body.clone())).expect("a request");
        let app = self.app.clone();
        self.rt.block_on(async {
            let answer = async {
                let resp = app.oneshot(req).await.expect("the router answers");
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.expect("a body").to_bytes();
                (status, body.to_vec())
            };
            tokio::time::timeout(ANSWER_WITHIN, answer)
                .await
                .map_err(|_| TestCaseError::fail(format!("no answer in {ANSWER_WITHIN:?}")))
        })
    }

    /// Sends `r` and checks its answer: a success, or a 4xx (or a 503 for
    /// what this controller lacks) with the API's error shape.
    fn check(&self, r: &Request) -> Result<(), TestCaseError> {
        let (status, body) = self.send(r)?;
        if status < 400 {
            self.successes.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let route = &self.routes[r.route];
        let what = format!(
            "{} {} → {status} {}",
            route.method,
            route.path,
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| TestCaseError::fail(format!("{what}: not JSON: {e}")))?;
        let code = v["error"]["code"].as_str().unwrap_or_default();
        let message = v["error"]["message"].as_str().unwrap_or_default();
        prop_assert!(
            !code.is_empty() && !message.is_empty(),
            "{}: not the error shape",
            what
        );
        prop_assert!(
            status < 500 || (status == 503 && ["artifacts_missing", "egress_off"].contains(&code)),
            "{}",
            what
        );
        Ok(())
    }

    /// Runs `cases` requests drawn from `strategy`, each checked.
    fn fuzz(&self, cases: u32, strategy: impl Strategy<Value = Request>) {
        let mut runner = TestRunner::new(config(cases));
        if let Err(e) = runner.run(&strategy, |r| self.check(&r)) {
            panic!("{e}");
        }
    }
}

fn route_index(c: &Controller) -> impl Strategy<Value = usize> {
    0..c.routes.len()
}

#[test]
fn arbitrary_bytes_are_refused_cleanly() {
    let c = Controller::start();
    let bytes = prop_oneof![
        20 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => proptest::collection::vec(any::<u8>(), 60_000..70_000),
        2 => (1usize..5000, prop::sample::select(vec![("[", "]"), ("{\"userId\":", "}")]))
            .prop_map(|(n, (open, close))| {
                [open.repeat(n), "1".into(), close.repeat(n)].concat().into_bytes()
            }),
    ];
    c.fuzz(1000, request((route_index(&c), bytes)));
}

#[test]
fn arbitrary_json_is_refused_cleanly() {
    let c = Controller::start();
    let json = any_json().prop_map(|v| v.to_string().into_bytes());
    c.fuzz(1000, request((route_index(&c), json)));
}

#[test]
fn near_valid_bodies_are_answered_cleanly() {
    let c = Controller::start();
    let bodies: Vec<_> = c
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| near_valid(r).prop_map(move |b| (i, b)).boxed())
        .collect();
    c.fuzz(2000, request(prop::strategy::Union::new(bodies)));
    assert!(
        c.successes.load(Ordering::Relaxed) > 0,
        "no near-valid body was taken: the fuzzing reaches no handler"
    );
}
