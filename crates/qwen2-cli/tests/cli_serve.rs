//! `qwen2 serve` as a user runs it: the real binary on a loopback port with the bundled
//! tiny-chat model, talked to over HTTP (and with the official `openai` Python client where
//! it is installed).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture;

/// A running server, stopped with SIGTERM on drop.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qwen2"))
            .args(["serve", "--model", fixture("tiny-chat").to_str().unwrap()])
            .args(["--port", "0", "--precision", "f32"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let address = loop {
            let line = lines
                .next()
                .expect("the server ended before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let server = Server { child, address };
        let t = Instant::now();
        while server.get("/health").0 != 200 {
            assert!(t.elapsed() < Duration::from_secs(60), "never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// One request; returns (status, headers, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &str,
    ) -> (u16, String, String) {
        let mut s = TcpStream::connect(&self.address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.address,
            body.len()
        );
        if !body.is_empty() {
            req += "Content-Type: application/json\r\n";
        }
        for h in headers {
            req += &format!("{h}\r\n");
        }
        req += "\r\n";
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, head.to_string(), body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.request("GET", path, &[], "");
        (status, body)
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let (status, _, body) = self.request("POST", path, &[], &body.to_string());
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// A streamed request: the JSON of every `data:` event before `[DONE]`.
    fn stream(&self, path: &str, body: &serde_json::Value) -> Vec<serde_json::Value> {
        let (status, _, text) = self.request("POST", path, &[], &body.to_string());
        assert_eq!(status, 200, "{text}");
        let events: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
        events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out += &rest[..n];
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn chat(max_tokens: usize, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "messages": [{"role": "user", "content": "Hello! How can I help?"}],
        "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "stream_options": if stream { serde_json::json!({"include_usage": true}) } else { serde_json::Value::Null },
    })
}

#[test]
fn serve_streams_what_it_answers_and_exits_cleanly() {
    let server = Server::start(&[]);
    let (status, plain) = server.post("/v1/chat/completions", &chat(10, false));
    assert_eq!(status, 200, "{plain}");
    let text = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let events = server.stream("/v1/chat/completions", &chat(10, true));
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let reasons: Vec<_> = events
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        [plain["choices"][0]["finish_reason"].as_str().unwrap()]
    );
    let usage = &events.last().unwrap()["usage"];
    assert_eq!(
        usage["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
    assert_eq!(usage["prompt_tokens"], plain["usage"]["prompt_tokens"]);
    // The same text as `qwen2 run` gives for the same message.
    let run = common::qwen2(&[
        "run",
        "--model",
        fixture("tiny-chat").to_str().unwrap(),
        "--precision",
        "f32",
        "--temperature",
        "0",
        "-n",
        "10",
        "--json",
        "--prompt",
        "Hello! How can I help?",
    ]);
    let run: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(run["text"].as_str().unwrap(), text);

    // Completions: streamed text and usage equal the plain response's.
    let body = serde_json::json!({"prompt": "Hi", "max_tokens": 9, "temperature": 0});
    let (_, plain) = server.post("/v1/completions", &body);
    let mut streaming = body.clone();
    streaming["stream"] = true.into();
    streaming["stream_options"] = serde_json::json!({"include_usage": true});
    let events = server.stream("/v1/completions", &streaming);
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, plain["choices"][0]["text"].as_str().unwrap());
    let usage = &events.last().unwrap()["usage"];
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[k], plain["usage"][k], "{k}");
    }
    assert_eq!(plain["usage"]["completion_tokens"], 9);
    assert_eq!(plain["choices"][0]["finish_reason"], "length");

    // Seeds: the same seed samples the same text.
    let sampled = |seed: u64| {
        let body =
            serde_json::json!({"prompt": "Hi", "max_tokens": 16, "temperature": 1.0, "seed": seed});
        server.post("/v1/completions", &body).1["choices"][0]["text"].clone()
    };
    assert_eq!(sampled(7), sampled(7));
    // Logprobs: the tokens join to the text.
    let body =
        serde_json::json!({"prompt": "Hi", "max_tokens": 6, "temperature": 0, "logprobs": 2});
    let (_, c) = server.post("/v1/completions", &body);
    let tokens: String = c["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens, c["choices"][0]["text"].as_str().unwrap());
    // Stop strings never leak.
    let full = server
        .post(
            "/v1/completions",
            &serde_json::json!({"prompt": "Hi", "max_tokens": 12, "temperature": 0}),
        )
        .1;
    let full = full["choices"][0]["text"].as_str().unwrap().to_string();
    if let Some(cut) = full.char_indices().nth(3).map(|(i, _)| i) {
        let stop = full[cut..].chars().take(2).collect::<String>();
        let body =
            serde_json::json!({"prompt": "Hi", "max_tokens": 12, "temperature": 0, "stop": stop});
        let (_, r) = server.post("/v1/completions", &body);
        let got = r["choices"][0]["text"].as_str().unwrap();
        assert!(
            full.starts_with(got) && !got.contains(&stop),
            "{got:?} vs {full:?} stop {stop:?}"
        );
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
    }
    // Prompt + max_tokens beyond the context: 400 in OpenAI's shape.
    let (status, e) = server.post(
        "/v1/completions",
        &serde_json::json!({"prompt": "Hi", "max_tokens": 100000}),
    );
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("context"),
        "{e}"
    );
    // /metrics counted what happened.
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics
            .contains("qwen2_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("qwen2_generation_tokens_total"),
        "{metrics}"
    );

    // The official openai client, where it is installed.
    let have_openai = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if have_openai {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts/openai_client_check.py");
        let out = Command::new("python3")
            .arg(script)
            .args(["--base-url", &format!("http://{}/v1", server.address)])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        eprintln!("{report}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{report}");
    } else {
        eprintln!(
            "skipped the openai client check: python3 cannot import openai (pip install openai)"
        );
    }

    // SIGTERM: the server stops and exits 0.
    let mut server = server;
    signal(server.child.id(), libc::SIGTERM);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_burst_beyond_the_queue_gets_503_and_the_rest_is_answered() {
    let server = std::sync::Arc::new(Server::start(&["--max-seqs", "1", "--max-queue", "1"]));
    let send = |max_tokens: u32| {
        let s = server.clone();
        std::thread::spawn(move || {
            let body =
                serde_json::json!({"prompt": "Hi", "max_tokens": max_tokens, "temperature": 0});
            s.request("POST", "/v1/completions", &[], &body.to_string())
        })
    };
    // A long request first, and the burst once the scheduler runs it: the queue's one place is
    // then free for the burst (sent together, a request still queued when the next arrives
    // leaves no place, which on a loaded machine left one answer).
    let mut threads = vec![send(200)];
    let started = std::time::Instant::now();
    while !server
        .get("/metrics")
        .1
        .contains("qwen2_requests_running 1")
        && started.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    threads.extend((1..12).map(|_| send(60)));
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    assert_eq!(busy.len() + ok, 12, "{answers:?}");
    assert!(
        !busy.is_empty() && ok >= 2,
        "{} busy, {ok} answered",
        busy.len()
    );
    let (_, head, body) = busy[0];
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    let e: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(e["error"]["message"].is_string(), "{body}");
}

#[test]
fn an_api_key_guards_everything_but_health() {
    let server = Server::start(&["--api-key", "sekret"]);
    assert_eq!(server.get("/health").0, 200);
    assert_eq!(server.get("/v1/models").0, 401);
    let (status, _, _) = server.request("GET", "/v1/models", &["Authorization: Bearer sekret"], "");
    assert_eq!(status, 200);
    let (status, _, _) = server.request("GET", "/v1/models", &["x-api-key: sekret"], "");
    assert_eq!(status, 200);
    let (status, _, body) =
        server.request("GET", "/v1/models", &["Authorization: Bearer wrong"], "");
    assert_eq!(status, 401);
    assert!(body.contains("authentication_error"), "{body}");
}

/// 16 concurrent greedy completions of different lengths against `--max-seqs 4` each return
/// exactly what the same request returns alone (f32): nothing lost, mixed up or duplicated.
#[test]
fn concurrent_requests_over_http_get_what_each_gets_alone() {
    let server = std::sync::Arc::new(Server::start(&["--max-seqs", "4"]));
    // Distinct first ids, so no request reuses another's cached prefix.
    let body = |i: usize| {
        let prompt: Vec<u32> = (0..3 + 4 * i)
            .map(|k| (10 + 17 * i + 5 * k) as u32 % 300 + 10)
            .collect();
        serde_json::json!({"prompt": prompt, "max_tokens": 6 + 3 * i, "temperature": 0})
    };
    let text = |v: &serde_json::Value| {
        (
            v["choices"][0]["text"].as_str().unwrap().to_string(),
            v["usage"]["completion_tokens"].clone(),
        )
    };
    let alone: Vec<_> = (0..16)
        .map(|i| text(&server.post("/v1/completions", &body(i)).1))
        .collect();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let s = server.clone();
            let b = body(i);
            std::thread::spawn(move || s.post("/v1/completions", &b))
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (status, v) = t.join().unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(text(&v), alone[i], "request {i}");
    }
    let (_, metrics) = server.get("/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (rows, steps) = (
        value("qwen2_decode_rows_total"),
        value("qwen2_decode_steps_total"),
    );
    assert!(
        rows > steps,
        "the concurrent requests shared decode steps: {rows} rows in {steps} steps"
    );
}
