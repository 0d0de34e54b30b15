//! Chat sessions and generation on the tiny-chat model: HF greedy goldens, KV cache reuse
//! across turns, a growing cache, seeded sampling and stop strings.

mod common;

use common::json_ids;

use common::{fixture_dir, B};
use qwen2_burn::core::chat::{ChatOptions, ChatSession};
use qwen2_burn::core::generate::{generate_in_cache, Flow, GenerateOptions};
use qwen2_burn::core::sampling::SamplingParams;
use qwen2_burn::core::text::{ChatTemplate, Message, TextTokenizer};
use qwen2_burn::core::{PrecisionPlan, Qwen2Model};

fn tiny() -> (Qwen2Model<B>, TextTokenizer, ChatTemplate) {
    let dir = fixture_dir("tiny-chat");
    (
        common::load("tiny-chat", PrecisionPlan::F32),
        TextTokenizer::from_model_dir(&dir).unwrap(),
        ChatTemplate::from_model_dir(&dir).unwrap(),
    )
}

fn text_goldens() -> serde_json::Value {
    let path = fixture_dir("tiny-chat").join("text_goldens.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn conversation(name: &str) -> Vec<Message> {
    let path = fixture_dir("qwen-tokenizer").join("goldens.json");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(g["conversations"][name].clone()).unwrap()
}

fn greedy(max_new_tokens: usize) -> ChatOptions {
    ChatOptions {
        generate: GenerateOptions {
            eos_token_ids: vec![2, 0],
            ..GenerateOptions::greedy(max_new_tokens)
        },
        stop_strings: vec![],
        template_vars: Default::default(),
        cancel: None,
    }
}

#[test]
fn chat_turn_matches_hf_greedy_generation() {
    let (model, tok, template) = tiny();
    for chat in text_goldens()["chats"].as_array().unwrap() {
        let mut messages = conversation(chat["conversation"].as_str().unwrap());
        let last = messages.pop().unwrap();
        let rendered = template
            .render(
                &[messages.clone(), vec![last.clone()]].concat(),
                true,
                &Default::default(),
            )
            .unwrap();
        assert_eq!(rendered, chat["prompt_text"].as_str().unwrap());
        assert_eq!(
            tok.encode(&rendered).unwrap(),
            json_ids(&chat["prompt_ids"])
        );
        let mut session = ChatSession::with_messages(&model, &tok, &template, messages);
        let mut streamed = String::new();
        let turn = session
            .send(&last.content, &greedy(24), |t| streamed.push_str(t))
            .unwrap();
        assert_eq!(
            turn.generation.ids,
            json_ids(&chat["greedy_ids"]),
            "{}",
            chat["conversation"]
        );
        assert_eq!(turn.reply, chat["greedy_text"].as_str().unwrap());
        assert_eq!(streamed, turn.reply);
        assert_eq!(turn.reused_tokens, 0);
        assert_eq!(turn.prefilled_tokens, json_ids(&chat["prompt_ids"]).len());
    }
}

#[test]
fn later_turns_reuse_the_kv_cache_and_match_a_full_prefill() {
    let (model, tok, template) = tiny();
    let opts = greedy(6);
    let mut session = ChatSession::new(&model, &tok, &template, Some("Be brief."));
    let first = session.send("Hi!", &opts, |_| {}).unwrap();
    let cached = session.cached_tokens();
    assert_eq!(
        cached,
        first.prefilled_tokens + first.generation.ids.len() - 1
    );
    let second = session.send("Tell me a joke.", &opts, |_| {}).unwrap();
    assert_eq!(
        second.reused_tokens, cached,
        "the whole first turn stays cached"
    );
    // Only what the conversation added is prefilled: the end of the reply (its last token was
    // never fed), the turn markers and the new message.
    let added = tok
        .encode(
            "\n<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n",
        )
        .unwrap();
    assert_eq!(second.prefilled_tokens, added.len());
    // The same conversation prefilled from scratch gives the same reply.
    let mut history = session.messages().to_vec();
    history.truncate(history.len() - 2);
    let mut fresh = ChatSession::with_messages(&model, &tok, &template, history);
    let again = fresh.send("Tell me a joke.", &opts, |_| {}).unwrap();
    assert_eq!(again.reused_tokens, 0);
    assert_eq!(again.generation.ids, second.generation.ids);
    // /reset keeps the system message and empties the cache.
    session.reset();
    assert_eq!(session.messages(), &[Message::new("system", "Be brief.")]);
    assert_eq!(session.cached_tokens(), 0);
    let after = session.send("Hi!", &opts, |_| {}).unwrap();
    assert_eq!(after.generation.ids, first.generation.ids);
}

#[test]
fn a_too_long_conversation_is_refused_and_the_session_survives() {
    let (model, tok, template) = tiny();
    let mut session = ChatSession::new(&model, &tok, &template, None);
    let long = "word ".repeat(400);
    let e = session.send(&long, &greedy(4), |_| {}).unwrap_err();
    assert!(e.to_string().contains("context"), "{e}");
    assert!(session.messages().is_empty());
    assert!(session.send("Hi!", &greedy(4), |_| {}).is_ok());
}

#[test]
fn the_kv_cache_grows_on_demand() {
    let name = "tied-f32-gqa";
    let g = common::goldens(name);
    let model = common::load(name, PrecisionPlan::F32);
    let mut cache = model.new_cache(2);
    let out = generate_in_cache(
        &model,
        &mut cache,
        &[],
        &g.prompt_ids,
        &GenerateOptions::greedy(g.greedy_ids.len()),
        |_| Ok(Flow::Continue),
    )
    .unwrap();
    assert_eq!(out.ids, g.greedy_ids);
    assert!(cache.capacity() >= g.prompt_ids.len() + g.greedy_ids.len() - 1);
}

#[test]
fn seeded_chat_sampling_is_reproducible_and_stop_strings_stop() {
    let (model, tok, template) = tiny();
    let sampled = |seed| {
        let mut opts = greedy(20);
        opts.generate.sampling = SamplingParams {
            temperature: 1.0,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.3,
            seed,
            ..SamplingParams::greedy()
        };
        let mut s = ChatSession::new(&model, &tok, &template, None);
        s.send("Hello!", &opts, |_| {}).unwrap().generation.ids
    };
    assert_eq!(sampled(1), sampled(1));
    assert_ne!(sampled(1), sampled(2));
    // Greedy replies of this model start with newlines: "\n\n" stops after two tokens.
    let mut opts = greedy(20);
    opts.stop_strings = vec!["\n\n".into()];
    let mut s = ChatSession::new(&model, &tok, &template, None);
    let turn = s.send("Hi!", &opts, |_| {}).unwrap();
    assert!(turn.generation.stopped_by_caller);
    assert_eq!(turn.reply, "");
    assert_eq!(turn.generation.ids.len(), 2);
}
