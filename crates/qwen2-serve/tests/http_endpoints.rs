//! `/v1/completions`, `/v1/models`, `/health`, `/metrics`, `/tokenize`, `/detokenize`, and
//! graceful shutdown.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{assert_error_shape, sse_chunks, MockEngine, MockScript, TestServer};
use qwen2_serve::http::ServerConfig;
use serde_json::{json, Value};

const COMPLETIONS: &str = "/v1/completions";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_plain_streamed_and_from_ids() {
    let server = TestServer::start_default().await;
    let (status, _, plain) = server
        .post(
            COMPLETIONS,
            &json!({"prompt": "Once", "max_tokens": 5, "logprobs": 2}),
        )
        .await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["object"], "text_completion");
    assert!(plain["id"].as_str().unwrap().starts_with("cmpl-"));
    let choice = &plain["choices"][0];
    assert_eq!(choice["text"], "Hello");
    assert_eq!(choice["finish_reason"], "length");
    let logprobs = &choice["logprobs"];
    assert_eq!(logprobs["tokens"], json!(["H", "e", "l", "l", "o"]));
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), 5);
    assert_eq!(logprobs["text_offset"], json!([0, 1, 2, 3, 4]));
    assert_eq!(logprobs["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(plain["usage"]["prompt_tokens"], 4);
    let job = &server.engine.seen_jobs()[0].job;
    assert!(!job.chat);
    assert_eq!(job.logprobs, Some(2));

    let (status, _, from_ids) = server
        .post(COMPLETIONS, &json!({"prompt": [79, 110], "max_tokens": 5}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(from_ids["usage"]["prompt_tokens"], 2);
    assert_eq!(server.engine.seen_jobs()[1].job.prompt_ids, vec![79, 110]);

    let (status, text) = server
        .post_stream(
            COMPLETIONS,
            &json!({"prompt": ["Once"], "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(status, 200);
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    let streamed: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, "Hello, wörld! The answer is 42.");
    let finishes = chunks
        .iter()
        .filter(|chunk| !chunk["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finishes, 1);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 32, "one extra token for ö");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_model_override() {
    let server = TestServer::start_default().await;
    let (status, body) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    let model = &body["data"][0];
    assert_eq!(model["id"], "mock-qwen");
    assert_eq!(model["object"], "model");
    assert_eq!(model["owned_by"], "qwen2-burn");
    assert!(model["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(server.get("/v1/models/mock-qwen").await.0, 200);
    let (status, body) = server.get("/v1/models/other").await;
    assert_eq!(status, 404);
    assert_error_shape(&body);

    let config = ServerConfig {
        model_id: Some("renamed".into()),
        ..ServerConfig::default()
    };
    let server = TestServer::start(MockScript::default(), config).await;
    let (_, body) = server.get("/v1/models").await;
    assert_eq!(body["data"][0]["id"], "renamed");
    let (_, _, answer) = server
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(answer["model"], "renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness() {
    let engine = MockEngine::new(MockScript::default());
    engine.ready.store(false, Ordering::SeqCst);
    let server = TestServer::start_with(engine.clone(), ServerConfig::default()).await;
    assert_eq!(
        server.get("/health").await,
        (503, json!({"status": "loading"}))
    );
    engine.ready.store(true, Ordering::SeqCst);
    assert_eq!(server.get("/health").await, (200, json!({"status": "ok"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_tokens() {
    let server = TestServer::start_default().await;
    let chat = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 3});
    server.post("/v1/chat/completions", &chat).await;
    server.post("/v1/chat/completions", &chat).await;
    server
        .post("/v1/chat/completions", &json!({"messages": []}))
        .await;
    server
        .post_stream(
            COMPLETIONS,
            &json!({"prompt": "x", "stream": true, "stop": "!"}),
        )
        .await;
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for line in [
        "qwen2_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2",
        "qwen2_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"} 1",
        "qwen2_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1",
        "qwen2_request_finish_total{reason=\"length\"} 2",
        "qwen2_request_finish_total{reason=\"stop\"} 1",
        "qwen2_request_finish_total{reason=\"cancelled\"} 0",
        "qwen2_time_to_first_token_seconds_count 3",
        "qwen2_e2e_request_latency_seconds_count 3",
        "# TYPE qwen2_inter_token_latency_seconds histogram",
        "qwen2_requests_running 0",
        "qwen2_requests_waiting 0",
        "qwen2_decode_steps_total 7",
        "qwen2_generation_tokens_total 18",
        "qwen2_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_and_detokenize() {
    let server = TestServer::start_default().await;
    let (status, _, body) = server.post("/tokenize", &json!({"prompt": "Hé"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"count": 2, "max_model_len": 1024, "tokens": [72, 233]})
    );
    let (status, _, body) = server
        .post(
            "/tokenize",
            &json!({"messages": [{"role": "user", "content": "a"}]}),
        )
        .await;
    assert_eq!(status, 200);
    let expected = "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n"
        .chars()
        .count();
    assert_eq!(body["count"], expected);
    let (status, _, body) = server.post("/tokenize", &json!({})).await;
    assert_eq!(status, 400);
    assert_error_shape(&body);
    let (status, _, body) = server
        .post("/detokenize", &json!({"tokens": [72, 233]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"prompt": "Hé"}));
    let (status, _, body) = server
        .post("/detokenize", &json!({"tokens": [55296]}))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_engine_and_returns() {
    let script = MockScript {
        token_delay: Duration::from_millis(10),
        ..MockScript::default()
    };
    let config = ServerConfig {
        shutdown_grace: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = TestServer::start(script, config).await;
    let client = server.client.clone();
    let url = server.url("/v1/chat/completions");
    let in_flight = tokio::spawn(async move {
        let response = client
            .post(url)
            .json(&json!({"messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap();
        response.json::<Value>().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let engine = server.engine.clone();
    let address = server.address;
    server.stop().await;
    assert_eq!(engine.shutdown_calls.load(Ordering::SeqCst), 1);
    let answer = in_flight.await.unwrap();
    assert_eq!(
        answer["choices"][0]["finish_reason"], "stop",
        "in-flight request finished"
    );
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "no longer listening"
    );
}
