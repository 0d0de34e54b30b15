//! Tokenizer, chat templates and streaming against HF `tokenizers` / transformers goldens.

mod common;

use common::json_ids;

use common::fixture_dir;
use qwen2_burn::core::text::{ChatTemplate, Message, TextStream, TextTokenizer};
use qwen2_burn::core::Error;

fn qwen_goldens() -> serde_json::Value {
    let path = fixture_dir("qwen-tokenizer").join("goldens.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The real tokenizer, parsed once for all tests (151k tokens and merges).
fn qwen_tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: std::sync::OnceLock<TextTokenizer> = std::sync::OnceLock::new();
    TOKENIZER.get_or_init(|| {
        TextTokenizer::from_file(fixture_dir("qwen-tokenizer").join("tokenizer.json.gz")).unwrap()
    })
}

#[test]
fn real_qwen_tokenizer_gives_the_known_ids() {
    let t = qwen_tokenizer();
    assert_eq!(
        t.encode("Hello, world! 你好").unwrap(),
        [9707, 11, 1879, 0, 220, 108386]
    );
    assert_eq!(t.token_id("<|endoftext|>"), Some(151643));
    assert_eq!(t.token_id("<|im_start|>"), Some(151644));
    assert_eq!(t.token_id("<|im_end|>"), Some(151645));
    assert_eq!(
        t.vocab_size() as u64,
        qwen_goldens()["vocab_size_with_added"].as_u64().unwrap()
    );
}

#[test]
fn encoding_and_decoding_match_hf_tokenizers_on_varied_text() {
    let t = qwen_tokenizer();
    let g = qwen_goldens();
    let cases = g["encodings"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = json_ids(&case["ids"]);
        assert_eq!(t.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(t.decode(&want, false).unwrap(), case["decoded"], "{text:?}");
        assert_eq!(
            t.decode(&want, true).unwrap(),
            case["decoded_skip_special"],
            "{text:?} (skip special)"
        );
    }
}

#[test]
fn chat_templates_render_like_hf_apply_chat_template() {
    let g = qwen_goldens();
    let qwen3 = ChatTemplate::from_model_dir(fixture_dir("qwen-tokenizer")).unwrap();
    assert!(
        qwen3.origin().ends_with("tokenizer_config.json"),
        "{}",
        qwen3.origin()
    );
    let chatml = ChatTemplate::builtin_chatml(Default::default()).unwrap();
    let renderings = g["renderings"].as_array().unwrap();
    assert!(renderings.len() >= 12);
    for r in renderings {
        let template = match r["template"].as_str().unwrap() {
            "qwen3" => &qwen3,
            _ => &chatml,
        };
        let name = r["conversation"].as_str().unwrap();
        let messages: Vec<Message> =
            serde_json::from_value(g["conversations"][name].clone()).unwrap();
        let mut extra = serde_json::Map::new();
        if let Some(v) = r.get("enable_thinking") {
            extra.insert("enable_thinking".into(), v.clone());
        }
        let add = r["add_generation_prompt"].as_bool().unwrap();
        let text = template.render(&messages, add, &extra).unwrap();
        assert_eq!(
            text,
            r["text"].as_str().unwrap(),
            "{} / {name} / add_generation_prompt={add}",
            r["template"]
        );
    }
}

#[test]
fn a_model_without_a_template_gets_the_builtin_chatml() {
    // The tied-f32-gqa fixture ships no tokenizer_config.json.
    let t = ChatTemplate::from_model_dir(fixture_dir("tied-f32-gqa")).unwrap();
    assert!(t.origin().contains("built-in ChatML"), "{}", t.origin());
    let text = t
        .render(&[Message::new("user", "Hi")], true, &Default::default())
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn template_helpers_and_errors() {
    let t = |src: &str| ChatTemplate::new(src.into(), "test".into(), Default::default());
    let e = t("{{ raise_exception('roles must alternate') }}")
        .unwrap()
        .render(&[Message::new("user", "x")], false, &Default::default())
        .unwrap_err();
    assert!(matches!(e, Error::ChatTemplate { .. }), "{e:?}");
    assert!(e.to_string().contains("roles must alternate"), "{e}");
    let e = t("{% for m in messages %}").unwrap_err();
    assert!(e.to_string().contains("chat template from test"), "{e}");
    // tojson like Python's json.dumps(ensure_ascii=False): ", " and ": ", no HTML escaping.
    let mut extra = serde_json::Map::new();
    extra.insert(
        "tool".into(),
        serde_json::json!({"name": "f", "args": ["<a>", 1, "日本"]}),
    );
    let out = t("{{ tool | tojson }}|{{ tool | tojson(indent=2) }}")
        .unwrap()
        .render(&[Message::new("user", "x")], false, &extra)
        .unwrap();
    assert_eq!(
        out,
        "{\"name\": \"f\", \"args\": [\"<a>\", 1, \"日本\"]}|{\n  \"name\": \"f\",\n  \"args\": [\n    \"<a>\",\n    1,\n    \"日本\"\n  ]\n}"
    );
    // Python string methods through pycompat.
    let out = t("{{ messages[0].content.strip().split(',')[1] | trim }}")
        .unwrap()
        .render(
            &[Message::new("user", "  a, b ")],
            false,
            &Default::default(),
        )
        .unwrap();
    assert_eq!(out, "b");
}

#[test]
fn missing_or_corrupt_tokenizer_files_are_named() {
    let e = TextTokenizer::from_model_dir(fixture_dir("tied-f32-gqa")).unwrap_err();
    assert!(
        e.to_string().contains("tokenizer.json") && e.to_string().contains("not found"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{\"not\": \"a tokenizer\"}").unwrap();
    let e = TextTokenizer::from_file(&bad).unwrap_err();
    assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
    let t = qwen_tokenizer();
    let e = t.decode(&[9707, 999_999], false).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                id: 999_999,
                position: 1,
                ..
            }
        ),
        "{e:?}"
    );
}

/// Pushes `ids` one by one; returns the chunks and whether a stop string ended the stream.
fn stream_all(t: &TextTokenizer, ids: &[u32], stops: &[&str]) -> (Vec<String>, bool) {
    let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
    let mut s = TextStream::new(t, true, &stops);
    let mut chunks = Vec::new();
    for &id in ids {
        let step = s.push(id).unwrap();
        chunks.push(step.text);
        if step.stopped {
            return (chunks, true);
        }
    }
    chunks.push(s.finish().unwrap());
    (chunks, false)
}

#[test]
fn streaming_never_emits_a_broken_utf8_character() {
    let t = qwen_tokenizer();
    for text in [
        "emoji: 😀👍🏽🇯🇵 👨‍👩‍👧‍👦 and ❤️",
        "数学是科学的皇后，数论是数学的皇后。",
        "日本語のテキストと한국어 텍스트",
        "mixed ascii 😀 and 你好 at the end 🇯🇵",
    ] {
        let ids = t.encode(text).unwrap();
        let (chunks, stopped) = stream_all(t, &ids, &[]);
        assert!(!stopped);
        for c in &chunks {
            assert!(!c.contains('\u{FFFD}'), "chunk {c:?} of {text:?}");
        }
        assert_eq!(chunks.concat(), text);
        if text.starts_with("emoji") {
            // The family emoji spans tokens that are not characters on their own.
            let held = chunks[..ids.len()].iter().filter(|c| c.is_empty()).count();
            assert!(held > 0, "no token was held back in {chunks:?}");
        }
    }
}

#[test]
fn stop_strings_end_the_stream_and_are_left_out() {
    let t = qwen_tokenizer();
    let ids = t.encode("The answer is 42.\nUser: next question").unwrap();
    let (chunks, stopped) = stream_all(t, &ids, &["\nUser:", "never"]);
    assert!(stopped);
    assert_eq!(chunks.concat(), "The answer is 42.");
    // A partial match is held back, then released when the text goes another way.
    let ids = t.encode("a\nUse the force").unwrap();
    let (chunks, stopped) = stream_all(t, &ids, &["\nUser:"]);
    assert!(!stopped);
    assert_eq!(chunks.concat(), "a\nUse the force");
    // A stop string that only starts at the very end is flushed by finish().
    let ids = t.encode("ends with \nUs").unwrap();
    let (chunks, _) = stream_all(t, &ids, &["\nUser:"]);
    assert_eq!(chunks.last().unwrap(), "\nUs");
    assert_eq!(chunks.concat(), "ends with \nUs");
}
