//! `/v1/chat/completions` over a real loopback socket against the mock engine.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{sse_chunks, MockScript, TestServer};
use futures_util::StreamExt;
use qwen2_serve::http::ServerConfig;
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "anything",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
        ],
        "some_future_field": {"ignored": true}
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

/// Joins the streamed content of choice `index` and checks the per-choice protocol: role
/// first, exactly one finish_reason, in a chunk with an empty delta, last.
fn streamed_choice(chunks: &[Value], index: u64) -> (String, String) {
    let mine: Vec<&Value> = chunks
        .iter()
        .filter(|chunk| chunk["choices"].as_array().is_some_and(|c| !c.is_empty()))
        .filter(|chunk| chunk["choices"][0]["index"] == index)
        .collect();
    assert_eq!(
        mine[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let finishes: Vec<&&Value> = mine
        .iter()
        .filter(|chunk| !chunk["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finishes.len(), 1, "one finish_reason per choice");
    let last = mine.last().unwrap();
    assert_eq!(last["choices"][0]["delta"], json!({}));
    let content = mine
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect::<String>();
    (
        content,
        last["choices"][0]["finish_reason"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_plain_answers_agree() {
    let server = TestServer::start_default().await;
    let (status, _, plain) = server
        .post(CHAT, &chat_body(json!({"max_tokens": 20})))
        .await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["object"], "chat.completion");
    assert!(plain["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(plain["model"], "mock-qwen");
    assert!(plain["system_fingerprint"].is_null());
    let choice = &plain["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hello, wörld! The a");
    assert_eq!(choice["finish_reason"], "length");
    assert!(choice["logprobs"].is_null());
    let usage = &plain["usage"];
    assert_eq!(usage["completion_tokens"], 20);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 20
    );

    let (status, body) = server
        .post_stream(CHAT, &chat_body(json!({"max_tokens": 20, "stream": true})))
        .await;
    assert_eq!(status, 200);
    let (chunks, done) = sse_chunks(&body);
    assert!(done, "ends with [DONE]: {body}");
    let ids: std::collections::HashSet<_> = chunks
        .iter()
        .map(|chunk| chunk["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "one id for all chunks");
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    let (content, reason) = streamed_choice(&chunks, 0);
    assert_eq!(
        content,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(reason, "length");
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["choices"][0]["delta"]["content"] != ""
                || chunk["choices"][0]["delta"].get("role").is_some()),
        "empty deltas send no chunk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_usage_adds_a_final_usage_chunk() {
    let server = TestServer::start_default().await;
    let (_, _, plain) = server.post(CHAT, &chat_body(json!({"stop": ["!"]}))).await;
    assert_eq!(plain["choices"][0]["message"]["content"], "Hello, wörld");
    assert_eq!(plain["choices"][0]["finish_reason"], "stop");
    let body =
        chat_body(json!({"stop": "!", "stream": true, "stream_options": {"include_usage": true}}));
    let (_, text) = server.post_stream(CHAT, &body).await;
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], plain["usage"]);
    for chunk in &chunks[..chunks.len() - 1] {
        assert!(
            chunk["usage"].is_null() && chunk.get("usage").is_some(),
            "{chunk}"
        );
    }
    let (content, _) = streamed_choice(&chunks, 0);
    assert_eq!(content, "Hello, wörld");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_use_consecutive_seeds() {
    let server = TestServer::start_default().await;
    let (status, _, plain) = server
        .post(
            CHAT,
            &chat_body(json!({"n": 2, "seed": 7, "max_tokens": 5})),
        )
        .await;
    assert_eq!(status, 200, "{plain}");
    let choices = plain["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(plain["usage"]["completion_tokens"], 10);
    let seeds: Vec<_> = server
        .engine
        .seen_jobs()
        .iter()
        .map(|seen| seen.job.sampling.seed)
        .collect();
    assert_eq!(seeds, vec![Some(7), Some(8)]);
    let (_, text) = server
        .post_stream(
            CHAT,
            &chat_body(json!({"n": 2, "max_tokens": 5, "stream": true})),
        )
        .await;
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    for index in 0..2 {
        let (content, reason) = streamed_choice(&chunks, index);
        assert_eq!(content, "Hello");
        assert_eq!(reason, "length");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_join_to_the_content() {
    let server = TestServer::start_default().await;
    let body = chat_body(json!({"logprobs": true, "top_logprobs": 2, "max_tokens": 12}));
    let (status, _, plain) = server.post(CHAT, &body).await;
    assert_eq!(status, 200, "{plain}");
    let content = plain["choices"][0]["message"]["content"].as_str().unwrap();
    let entries = plain["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    let joined: String = entries
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, content);
    assert_eq!(entries[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(entries[0]["bytes"], json!([72]));
    let job = &server.engine.seen_jobs()[0].job;
    assert_eq!(job.logprobs, Some(2));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, text) = server.post_stream(CHAT, &streamed).await;
    let (chunks, _) = sse_chunks(&text);
    let streamed_tokens: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .map(|entry| entry["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed_tokens, content);
}

const TOOL_REPLY: &str = "Checking.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call><|im_end|>";

fn tool_body(extra: Value) -> Value {
    let mut body = json!({
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Bern\"}"}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_plain_and_streamed() {
    let script = MockScript {
        reply: TOOL_REPLY.into(),
        ..MockScript::default()
    };
    let server = TestServer::start(script, ServerConfig::default()).await;
    let (status, _, plain) = server.post(CHAT, &tool_body(json!({}))).await;
    assert_eq!(status, 200, "{plain}");
    let choice = &plain["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Checking.");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call"));
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Zürich"}));

    // The template saw parsed arguments and the tools; the job kept special tokens.
    let (messages, tools) = server.engine.rendered.lock().unwrap()[0].clone();
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Bern"})
    );
    assert_eq!(tools.unwrap().len(), 1);
    assert!(server.engine.seen_jobs()[0].job.keep_special_tokens);

    let (_, text) = server
        .post_stream(CHAT, &tool_body(json!({"stream": true})))
        .await;
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    let (content, reason) = streamed_choice(&chunks, 0);
    assert_eq!(content, "Checking.");
    assert_eq!(reason, "tool_calls");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(
        calls[0]["function"]["arguments"],
        call["function"]["arguments"]
    );

    // tool_choice "none": tools rendered, no parsing, special tokens dropped by the engine.
    let (_, _, none) = server
        .post(CHAT, &tool_body(json!({"tool_choice": "none"})))
        .await;
    assert_eq!(none["choices"][0]["finish_reason"], "stop");
    assert!(none["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("<tool_call>"));
    assert!(!server.engine.seen_jobs()[2].job.keep_special_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_error_mid_stream_and_plain() {
    let script = MockScript {
        error_after: Some(3),
        ..MockScript::default()
    };
    let server = TestServer::start(script, ServerConfig::default()).await;
    let (status, text) = server
        .post_stream(CHAT, &chat_body(json!({"stream": true})))
        .await;
    assert_eq!(status, 200);
    let (chunks, done) = sse_chunks(&text);
    assert!(done, "[DONE] after the error chunk");
    let last = chunks.last().unwrap();
    common::assert_error_shape(last);
    assert_eq!(last["error"]["type"], "server_error");
    let (status, _, plain) = server.post(CHAT, &chat_body(json!({}))).await;
    assert_eq!(status, 500);
    assert!(common::assert_error_shape(&plain)["message"]
        .as_str()
        .unwrap()
        .contains("non-finite"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_comments_during_a_long_prefill() {
    let script = MockScript {
        prefill_delay: Duration::from_millis(700),
        ..MockScript::default()
    };
    let config = ServerConfig {
        keep_alive: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let server = TestServer::start(script, config).await;
    let (status, text) = server
        .post_stream(CHAT, &chat_body(json!({"stream": true, "max_tokens": 3})))
        .await;
    assert_eq!(status, 200);
    assert!(text.contains(": keep-alive\n\n"), "{text}");
    assert!(sse_chunks(&text).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_job() {
    let script = MockScript {
        token_delay: Duration::from_millis(50),
        reply: "x".repeat(200),
        ..MockScript::default()
    };
    let config = ServerConfig {
        keep_alive: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let server = TestServer::start(script, config).await;
    let response = server
        .client
        .post(server.url(CHAT))
        .json(&chat_body(json!({"stream": true})))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(stream);
    let cancelled = server.engine.seen_jobs()[0].cancelled.clone();
    let start = Instant::now();
    while !cancelled.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cancelled.load(Ordering::SeqCst),
        "job cancelled after the client left"
    );
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );

    // A plain request whose client times out is cancelled too.
    let _ = server
        .client
        .post(server.url(CHAT))
        .timeout(Duration::from_millis(200))
        .json(&chat_body(json!({})))
        .send()
        .await;
    let cancelled = server.engine.seen_jobs()[1].cancelled.clone();
    let start = Instant::now();
    while !cancelled.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cancelled.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("qwen2_request_finish_total{reason=\"cancelled\"} 2"),
        "{metrics}"
    );
}
