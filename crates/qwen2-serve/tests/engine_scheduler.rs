//! The real engine on the bundled tiny-chat model (CPU): batched decoding gives each request
//! what it gets alone, cancelled requests free their slot, a full queue refuses, a row whose
//! logits overflow continues under the safer plan while the other rows go on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qwen2_core::engine::{ModelLoader, ModelSpec, TextAssets};
use qwen2_core::precision::Choice;
use qwen2_core::Policy;
use qwen2_serve::engine_api::{
    Engine, FinishReason, Job, JobEvent, JobHandle, SamplingSettings, SubmitError,
};
use qwen2_serve::scheduler::{EngineOptions, ModelEngine};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn engine(dir: &std::path::Path, policy: Choice, options: EngineOptions) -> Arc<ModelEngine> {
    let mut spec = ModelSpec::new(dir);
    spec.precision = policy;
    spec.fallback = Some(true);
    let loader = ModelLoader::<qwen2_cpu::Cpu>::new(spec).unwrap();
    let assets = TextAssets::from_model_dir(dir).unwrap();
    let engine = ModelEngine::start(loader, assets, options).unwrap();
    engine.wait_ready().unwrap();
    engine
}

fn greedy_job(prompt_ids: Vec<u32>, max_tokens: usize) -> Job {
    Job {
        prompt_ids,
        sampling: SamplingSettings {
            temperature: Some(0.0),
            ..Default::default()
        },
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        chat: false,
        logprobs: None,
        keep_special_tokens: false,
    }
}

/// Every event of a job: (ids, text, finish reason or error).
fn collect(mut h: JobHandle) -> (Vec<u32>, String, Result<FinishReason, String>) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(e) = h.events.blocking_recv() {
        match e {
            JobEvent::Started => {}
            JobEvent::Delta {
                text: t, ids: i, ..
            } => {
                text += &t;
                ids.extend(i);
            }
            JobEvent::Done { finish_reason, .. } => return (ids, text, Ok(finish_reason)),
            JobEvent::Error { message } => return (ids, text, Err(message)),
        }
    }
    (ids, text, Err("the stream ended without Done".into()))
}

/// 16 prompts of different lengths from the tokenizer's vocabulary.
fn prompts(e: &ModelEngine) -> Vec<Vec<u32>> {
    let words = [
        "Hi!",
        "Tell me a joke.",
        "Hello! How can I help?",
        "What is the capital of France?",
        "Write a poem about the sea and the sky.",
        "ok",
        "Why?",
        "Count to ten please.",
    ];
    (0..16)
        .map(|i| {
            let text = format!("{} {}", words[i % 8], words[(i * 3 + 1) % 8]).repeat(1 + i % 3);
            e.tokenize(&text).unwrap()
        })
        .collect()
}

#[test]
fn sixteen_concurrent_requests_get_what_each_gets_alone() {
    let options = EngineOptions {
        max_seqs: 4,
        idle_caches: 0,   // no prefix reuse: every request prefills its whole prompt
        prefill_chunk: 7, // several chunks per prompt, interleaved with other rows' decoding
        ..Default::default()
    };
    let e = engine(&fixture("tiny-chat"), Choice::Fixed(Policy::F32), options);
    let prompts = prompts(&e);
    let budget = |i: usize| 8 + 5 * i;
    let alone: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| collect(e.submit(greedy_job(p.clone(), budget(i))).unwrap()))
        .collect();
    let before = e.stats();
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| e.submit(greedy_job(p.clone(), budget(i))).unwrap())
        .collect();
    let together: Vec<_> = handles.into_iter().map(collect).collect();
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i}: batched result differs from alone");
        assert!(a.2.is_ok(), "request {i}: {:?}", a.2);
    }
    let after = e.stats();
    let (steps, rows) = (
        after.decode_steps_total - before.decode_steps_total,
        after.decode_rows_total - before.decode_rows_total,
    );
    eprintln!(
        "concurrent: {rows} rows in {steps} decode steps ({:.2} per step)",
        rows as f64 / steps as f64
    );
    assert!(
        rows as f64 / steps as f64 > 2.0,
        "requests were not batched: {rows} rows / {steps} steps"
    );
    e.shutdown(Duration::from_secs(1));
}

#[test]
fn a_cancelled_request_frees_its_slot_and_a_full_queue_refuses() {
    let options = EngineOptions {
        max_seqs: 1,
        max_queue: 1,
        ..Default::default()
    };
    let e = engine(&fixture("tiny-chat"), Choice::Fixed(Policy::F32), options);
    let p = e.tokenize("Tell me a joke.").unwrap();
    let mut long = e.submit(greedy_job(p.clone(), 200)).unwrap();
    // Wait for its first token: it holds the only slot.
    loop {
        match long.events.blocking_recv() {
            Some(JobEvent::Delta { .. }) => break,
            Some(JobEvent::Started) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let queued = e.submit(greedy_job(p.clone(), 3)).unwrap();
    let refused = e.submit(greedy_job(p.clone(), 3));
    assert!(
        matches!(refused, Err(SubmitError::QueueFull { waiting: 1 })),
        "{:?}",
        refused.err()
    );
    let t = Instant::now();
    drop(long); // the client goes away
    let (ids, _, end) = collect(queued);
    assert_eq!((ids.len(), end), (3, Ok(FinishReason::Length)));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let s = e.stats();
    assert!(
        s.generated_tokens_total < 100,
        "the cancelled request ran on: {} tokens",
        s.generated_tokens_total
    );
    assert_eq!((s.running, s.waiting), (0, 0));
    e.shutdown(Duration::from_secs(1));
    assert!(matches!(
        e.submit(greedy_job(p, 1)),
        Err(SubmitError::ShuttingDown)
    ));
}

#[test]
fn a_row_that_overflows_continues_under_the_safer_plan_and_the_others_go_on() {
    // massive-1e5's weights (a 1e5 spike when the first token is its prompt's first token)
    // with tiny-chat's tokenizer (same 320-id vocabulary).
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture("massive-1e5").join(f), dir.path().join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny-chat").join(f), dir.path().join(f)).unwrap();
    }
    let facts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("massive-1e5").join("goldens.json")).unwrap(),
    )
    .unwrap();
    let spike: Vec<u32> = facts["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let calm: Vec<u32> = spike.iter().map(|&id| (id + 7) % 300 + 10).collect();
    let options = EngineOptions {
        max_seqs: 4,
        ..Default::default()
    };
    let e = engine(dir.path(), Choice::Fixed(Policy::F16), options);
    let a = e.submit(greedy_job(spike.clone(), 6)).unwrap();
    let b = e.submit(greedy_job(calm.clone(), 6)).unwrap();
    let (a, b) = (collect(a), collect(b));
    assert_eq!(
        a.2,
        Ok(FinishReason::Length),
        "the spiking row ends normally"
    );
    assert_eq!(b.2, Ok(FinishReason::Length));
    let s = e.stats();
    assert!(
        s.nonfinite_events_total >= 1 && s.fallbacks_total >= 1,
        "{s:?}"
    );
    e.shutdown(Duration::from_secs(1));
    // The spiking row equals f16-safe alone; the calm one stayed on f16 and equals f16 alone.
    let safe = engine(
        dir.path(),
        Choice::Fixed(Policy::F16Safe),
        EngineOptions::default(),
    );
    assert_eq!(collect(safe.submit(greedy_job(spike, 6)).unwrap()).0, a.0);
    safe.shutdown(Duration::from_secs(1));
    let naive = engine(
        dir.path(),
        Choice::Fixed(Policy::F16),
        EngineOptions::default(),
    );
    assert_eq!(collect(naive.submit(greedy_job(calm, 6)).unwrap()).0, b.0);
    assert_eq!(
        naive.stats().fallbacks_total,
        0,
        "the calm prompt never overflows f16"
    );
    naive.shutdown(Duration::from_secs(1));
}

#[test]
fn a_gguf_model_answers_what_its_hf_directory_answers() {
    let gguf = fixture("gguf-tiny-chat/tiny-chat-bf16.gguf");
    let run = |path: &std::path::Path| {
        let e = engine(path, Choice::Fixed(Policy::F32), EngineOptions::default());
        let prompt = e.tokenize("What is the capital of France?").unwrap();
        let out = collect(e.submit(greedy_job(prompt, 12)).unwrap());
        let id = e.model_id().to_string();
        e.shutdown(Duration::from_secs(1));
        (out, id)
    };
    let (from_gguf, id) = run(&gguf);
    assert_eq!(id, "tiny-chat-bf16");
    assert!(from_gguf.2.is_ok(), "{:?}", from_gguf.2);
    assert_eq!(from_gguf, run(&fixture("tiny-chat")).0);
}
