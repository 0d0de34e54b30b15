//! Every error is OpenAI's `{"error": {...}}`: validation, auth, routing, limits, the queue.

mod common;

use std::time::Duration;

use common::{assert_error_shape, MockScript, TestServer};
use futures_util::StreamExt;
use qwen2_serve::http::ServerConfig;
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

async fn expect_error(
    server: &TestServer,
    path: &str,
    body: Value,
    status: u16,
    param: Option<&str>,
) {
    let (got, _, response) = server.post(path, &body).await;
    assert_eq!(got, status, "{body} → {response}");
    let error = assert_error_shape(&response);
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body} → {response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_field() {
    let server = TestServer::start_default().await;
    let cases = [
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user"}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"type": "function",
                "function": {"name": "f", "arguments": "{not json"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": user("x"), "temperature": 3}),
            "temperature",
        ),
        (json!({"messages": user("x"), "top_p": 1.5}), "top_p"),
        (
            json!({"messages": user("x"), "frequency_penalty": 2.5}),
            "frequency_penalty",
        ),
        (json!({"messages": user("x"), "n": 0}), "n"),
        (json!({"messages": user("x"), "stop": [1]}), "stop[0]"),
        (
            json!({"messages": user("x"), "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            json!({"messages": user("x"), "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            json!({"messages": user("x"), "logit_bias": {"abc": 1}}),
            "logit_bias",
        ),
        (
            json!({"messages": user("x"), "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (
            json!({"messages": user("x"), "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"messages": user("x"), "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tool_choice",
        ),
        (
            json!({"messages": user("x"), "tools": [{"type": "retrieval"}]}),
            "tools[0]",
        ),
        (
            json!({"messages": user("x"), "max_tokens": -1}),
            "max_tokens",
        ),
        (json!({"messages": "not a list"}), "messages"),
        (
            json!({"messages": user("x"), "temperature": "hot"}),
            "temperature",
        ),
        (json!({"messages": user("x"), "n": 1.5}), "n"),
    ];
    for (body, param) in cases {
        expect_error(&server, CHAT, body, 400, Some(param)).await;
    }
    let completion_cases = [
        (json!({"prompt": ["a", "b"]}), "prompt"),
        (json!({"prompt": "a", "echo": true}), "echo"),
        (json!({"prompt": "a", "suffix": "z"}), "suffix"),
        (json!({"prompt": "a", "logprobs": 6}), "logprobs"),
        (json!({}), "prompt"),
    ];
    for (body, param) in completion_cases {
        let (status, _, response) = server.post("/v1/completions", &body).await;
        assert_eq!(status, 400, "{body} → {response}");
        let error = assert_error_shape(&response);
        if body.get("prompt").is_some() {
            assert_eq!(error["param"], param, "{body} → {response}");
        }
    }
    // The server still works afterwards.
    let (status, _, _) = server.post(CHAT, &json!({"messages": user("x")})).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_overflow_is_a_400_with_the_numbers() {
    let server = TestServer::start_default().await;
    let long = "y".repeat(1100);
    let (status, _, body) = server.post(CHAT, &json!({"messages": user(&long)})).await;
    assert_eq!(status, 400);
    let error = assert_error_shape(&body);
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "context_length_exceeded");
    assert!(
        error["message"].as_str().unwrap().contains("1024"),
        "{body}"
    );
    let (status, _, body) = server
        .post(
            CHAT,
            &json!({"messages": user("short"), "max_tokens": 1000}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(assert_error_shape(&body)["param"], "max_tokens");
    let (status, _, body) = server
        .post("/v1/completions", &json!({"prompt": "z".repeat(1024)}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(assert_error_shape(&body)["param"], "prompt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_are_openai_shaped() {
    let config = ServerConfig {
        max_body_bytes: 1024,
        ..ServerConfig::default()
    };
    let server = TestServer::start(MockScript::default(), config).await;
    let client = &server.client;
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (client.get(server.url("/v1/nope")), 404),
        (client.get(server.url(CHAT)), 405),
        (client.delete(server.url("/v1/models")), 405),
        (
            client
                .post(server.url(CHAT))
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"messages\": {}, \"pad\": \"{}\"}}",
                    user("x"),
                    "p".repeat(4096)
                )),
            413,
        ),
        (
            client
                .post(server.url(CHAT))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
        ),
        (client.post(server.url(CHAT)).body("{}"), 415),
        (
            client
                .post(server.url(CHAT))
                .header("content-type", "application/json")
                .body("{\"messages\": [}"),
            400,
        ),
        (
            client
                .post(server.url(CHAT))
                .header("content-type", "application/json")
                .body("{\"messages\": [{\"content\": \"no role\"}]}"),
            400,
        ),
        (
            client
                .post(server.url("/detokenize"))
                .json(&json!({"tokens": ["a"]})),
            400,
        ),
    ];
    for (request, status) in cases {
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}"));
        assert_error_shape(&body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_503_with_retry_after() {
    let script = MockScript {
        capacity: 1,
        token_delay: Duration::from_millis(20),
        reply: "z".repeat(100),
        ..MockScript::default()
    };
    let server = TestServer::start(script, ServerConfig::default()).await;
    let busy = server
        .client
        .post(server.url(CHAT))
        .json(&json!({"messages": user("x"), "stream": true}))
        .send()
        .await
        .unwrap();
    let mut busy_stream = busy.bytes_stream();
    let _ = busy_stream.next().await;
    let (status, headers, body) = server.post(CHAT, &json!({"messages": user("x")})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    let error = assert_error_shape(&body);
    assert_eq!(error["code"], "queue_full");
    drop(busy_stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_protect_everything_but_health() {
    let config = ServerConfig {
        api_keys: vec!["sk-one".into(), "sk-two-longer".into()],
        ..ServerConfig::default()
    };
    let server = TestServer::start(MockScript::default(), config).await;
    let url = server.url("/v1/models");
    for request in [
        server.client.get(&url),
        server.client.get(&url).bearer_auth("sk-wrong"),
        server.client.get(&url).header("x-api-key", "sk-on"),
        server
            .client
            .get(&url)
            .header("authorization", "Basic sk-one"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(assert_error_shape(&body)["type"], "authentication_error");
    }
    for request in [
        server.client.get(&url).bearer_auth("sk-one"),
        server.client.get(&url).header("x-api-key", "sk-two-longer"),
    ] {
        assert_eq!(request.send().await.unwrap().status().as_u16(), 200);
    }
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 200);
    let response = server
        .client
        .post(server.url(CHAT))
        .json(&json!({"messages": user("x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_only_when_origins_are_configured() {
    let preflight = |server: &TestServer| {
        server
            .client
            .request(reqwest::Method::OPTIONS, server.url(CHAT))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let config = ServerConfig {
        cors_origins: vec!["https://app.example".into()],
        api_keys: vec!["k".into()],
        ..ServerConfig::default()
    };
    let server = TestServer::start(MockScript::default(), config).await;
    let response = preflight(&server).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let response = server
        .client
        .get(server.url("/health"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    let server = TestServer::start_default().await;
    let response = preflight(&server).await.unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert_ne!(response.status().as_u16(), 200);
}
