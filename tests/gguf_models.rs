//! GGUF models (tests/fixtures/gguf-tiny-chat, written by scripts/make_gguf_model_fixture.py
//! from tests/fixtures/tiny-chat the way llama.cpp's convert_hf_to_gguf.py does) load as the
//! same model, tokenizer and chat template as the Hugging Face directory they came from.
//!
//! Tolerances (f32 plan, CPU): the BF16 GGUF holds the checkpoint's own bf16 values, so its
//! logits equal the safetensors model's (asserted ≤ 1e-6, observed 0). The Q8_0 GGUF rounds
//! each weight to 8 bits per 32-value block: max |Δlogits| against the bf16/f32 model is 0.747
//! on logits up to 48.1 (1.55%), asserted < Q8_0_REL_TOL × max |logit|, with the same argmax
//! at every position. That is quantization error, not ours: HF transformers run in f32 on the
//! weights gguf-py dequantizes from the same file gives the same 0.747, and our Q8_0 logits
//! match that run to 2.0e-5 (checked once with scripts/make_gguf_model_fixture.py's inputs).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use qwen2_burn::core::engine::{ModelLoader, ModelSpec, TextAssets};
use qwen2_burn::core::text::{ChatTemplate, Message, TextTokenizer};
use qwen2_burn::core::weights::Checkpoint;
use qwen2_burn::core::{
    Error, LogitsFor, ModelSource, Platform, Policy, PrecisionPlan, Qwen2Config, Qwen2Model,
};
use qwen2_burn::cpu::Cpu;
use qwen2_gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};

const Q8_0_REL_TOL: f32 = 0.02;

fn gguf_dir() -> PathBuf {
    fixture_dir("gguf-tiny-chat")
}

fn bf16_file() -> PathBuf {
    gguf_dir().join("tiny-chat-bf16.gguf")
}

fn q8_file() -> PathBuf {
    gguf_dir().join("tiny-chat-q8_0.gguf")
}

fn try_load(path: &Path, plan: PrecisionPlan) -> Result<Qwen2Model<B>, Error> {
    Cpu::load_model(path, plan, &Cpu::devices().remove(0), &mut |_, _| {})
}

/// All-position logits of `ids`, f32 plan.
fn logits(path: &Path, ids: &[u32]) -> Vec<f32> {
    let model = try_load(path, PrecisionPlan::F32).unwrap();
    let mut cache = model.new_cache(ids.len());
    to_f32(model.forward(ids, &mut cache, LogitsFor::All).unwrap())
}

fn prompt() -> Vec<u32> {
    let text =
        "<|im_start|>user\nWhat is the capital of France? 日本<|im_end|>\n<|im_start|>assistant\n";
    TextTokenizer::from_model_dir(fixture_dir("tiny-chat"))
        .unwrap()
        .encode(text)
        .unwrap()
}

fn argmax_rows(v: &[f32], vocab: usize) -> Vec<usize> {
    v.chunks(vocab)
        .map(|r| (0..vocab).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
        .collect()
}

#[test]
fn bf16_gguf_logits_equal_the_safetensors_model() {
    let ids = prompt();
    let hf = logits(&fixture_dir("tiny-chat"), &ids);
    let gguf = logits(&bf16_file(), &ids);
    let err = max_abs_diff(&hf, &gguf);
    println!("bf16 GGUF vs safetensors: max |Δlogits| = {err:e}");
    assert!(err <= 1e-6, "{err}");
}

#[test]
fn q8_0_gguf_logits_are_close_and_split_sets_load_the_same() {
    let ids = prompt();
    let hf = logits(&fixture_dir("tiny-chat"), &ids);
    let q8 = logits(&q8_file(), &ids);
    let err = max_abs_diff(&hf, &q8);
    let peak = hf.iter().fold(0f32, |m, x| m.max(x.abs()));
    println!("Q8_0 GGUF vs safetensors: max |Δlogits| = {err:e} (max |logit| {peak:e})");
    assert!(err < Q8_0_REL_TOL * peak, "{err} vs max |logit| {peak}");
    assert_eq!(argmax_rows(&hf, 320), argmax_rows(&q8, 320));

    // The split set, by its directory, its first shard or its second shard.
    let split = gguf_dir().join("split");
    for path in [
        split.clone(),
        split.join("tiny-chat-q8_0-00001-of-00002.gguf"),
        split.join("tiny-chat-q8_0-00002-of-00002.gguf"),
    ] {
        assert_eq!(logits(&path, &ids), q8, "{}", path.display());
    }
}

#[test]
fn config_from_metadata_equals_config_json() {
    let mut hf = Qwen2Config::from_file(fixture_dir("tiny-chat").join("config.json")).unwrap();
    let gguf = Qwen2Config::from_model(bf16_file()).unwrap();
    // config.json lists eos ids [2, 0]; the GGUF holds one eos id (tokenizer_config.json's
    // eos_token, <|im_end|>), as llama.cpp's converter writes it.
    assert_eq!(gguf.eos_token_ids, vec![2]);
    hf.eos_token_ids = vec![2];
    assert_eq!(gguf, hf);
    assert!(gguf.tie_word_embeddings && gguf.rms_norm_eps == 1e-6);

    let q8 = Qwen2Config::from_model(q8_file()).unwrap();
    assert_eq!(q8.torch_dtype, None);
    assert_eq!(
        Qwen2Config {
            torch_dtype: None,
            ..gguf
        },
        q8
    );
}

#[test]
fn stored_dtype_picks_the_cpu_plan() {
    let dtype = |p: &Path| Checkpoint::open(p).unwrap().stored_dtype();
    assert_eq!(dtype(&bf16_file()), Some("bfloat16"));
    assert_eq!(dtype(&q8_file()), Some("q8_0"));
    let policy = |p: &Path| {
        ModelLoader::<Cpu>::new(ModelSpec::new(p))
            .unwrap()
            .resolved()
            .policy
    };
    assert_eq!(policy(&bf16_file()), Policy::Bf16);
    assert_eq!(policy(&q8_file()), Policy::F32);
    let ckpt = Checkpoint::open(q8_file()).unwrap();
    assert!(ckpt.contains("model.layers.1.self_attn.k_proj.bias"));
    assert!(!ckpt.contains("lm_head.weight"));
    assert_eq!(
        ckpt.shape("model.layers.0.mlp.down_proj.weight"),
        Some(&[64, 160][..])
    );
    assert_eq!(ckpt.names().count(), 26);
}

#[test]
fn tokenizer_from_metadata_matches_tokenizer_json() {
    let hf = TextTokenizer::from_model_dir(fixture_dir("tiny-chat")).unwrap();
    let gguf = TextTokenizer::from_model_dir(bf16_file()).unwrap();
    assert_eq!(gguf.vocab_size(), hf.vocab_size());
    let texts = [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "  leading spaces,\ttabs\nand\r\nnewlines\n\n",
        "Numbers: 0 12 345 6789 3.14159 -42 1e-6",
        "punctuation!?.,;:'\"()[]{}<>/\\|@#$%^&*~`-_=+",
        "it's I'm we'll they'd you've she's DON'T",
        "中文测试：你好，世界！日本語のテキスト",
        "emoji 🎉🚀👩‍💻 and accents: café naïve Ångström",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "text<|endoftext|>more<|im_end|><|im_start|>",
        "",
    ];
    for text in texts {
        let ids = hf.encode(text).unwrap();
        assert_eq!(gguf.encode(text).unwrap(), ids, "{text:?}");
        for skip in [false, true] {
            assert_eq!(
                gguf.decode(&ids, skip).unwrap(),
                hf.decode(&ids, skip).unwrap()
            );
        }
    }
    for token in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
        assert_eq!(gguf.token_id(token), hf.token_id(token), "{token}");
    }
}

#[test]
fn chat_template_and_text_assets_come_from_metadata() {
    let hf = ChatTemplate::from_model_dir(fixture_dir("tiny-chat")).unwrap();
    let gguf = ChatTemplate::from_model_dir(bf16_file()).unwrap();
    assert!(gguf.origin().contains("tokenizer.chat_template"));
    let chats = [
        vec![Message::new("user", "Hi")],
        vec![
            Message::new("system", "Be terse."),
            Message::new("user", "Capital of France?"),
            Message::new("assistant", "Paris."),
            Message::new("user", "And of Japan? 日本"),
        ],
    ];
    for messages in &chats {
        for add in [false, true] {
            let extra = Default::default();
            assert_eq!(
                gguf.render(messages, add, &extra).unwrap(),
                hf.render(messages, add, &extra).unwrap()
            );
        }
    }
    let assets = TextAssets::from_model_dir(&bf16_file()).unwrap();
    assert_eq!(assets.config_eos, vec![2]);
    assert_eq!(assets.generation, Default::default());
    assert_eq!(assets.chat_end_ids(), vec![2, 0]);
}

#[test]
fn model_paths_resolve_or_say_why_not() {
    let e = ModelSource::resolve(gguf_dir()).unwrap_err().to_string();
    assert!(
        e.contains("several GGUF models") && e.contains("tiny-chat-q8_0.gguf"),
        "{e}"
    );
    assert!(ModelSource::resolve(fixture_dir("tiny-chat")).is_ok_and(|s| !s.is_gguf()));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(bf16_file(), tmp.path().join("model.gguf")).unwrap();
    assert_eq!(
        ModelSource::resolve(tmp.path()).unwrap(),
        ModelSource::Gguf(tmp.path().join("model.gguf"))
    );
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    let e = ModelSource::resolve(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("both config.json"), "{e}");
}

/// Copies `src` to `dst` with `edit` applied to the metadata and tensor list.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(
        &mut Vec<(String, MetadataValue)>,
        &mut Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
    ),
) {
    let file = GgufFile::open(src).unwrap();
    let mut meta: Vec<(String, MetadataValue)> = file
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut tensors: Vec<_> = file
        .tensors()
        .map(|t| {
            let name = t.name().to_string();
            (name, t.ggml_type(), t.dims().to_vec(), t.data().to_vec())
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(k, v).unwrap();
    }
    for (name, ty, dims, data) in tensors {
        w.add_tensor(name, ty, &dims, data).unwrap();
    }
    w.write(dst).unwrap();
}

fn load_err(path: &Path) -> String {
    match try_load(path, PrecisionPlan::F32) {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_gguf_files_name_the_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name);

    // Another architecture.
    rewrite(&bf16_file(), &path("llama.gguf"), |meta, _| {
        for (k, v) in meta.iter_mut() {
            if k == "general.architecture" {
                *v = "llama".into();
            }
        }
    });
    let e = load_err(&path("llama.gguf"));
    println!("architecture: {e}");
    assert!(
        e.contains("llama.gguf") && e.contains("\"llama\"") && e.contains("general.architecture"),
        "{e}"
    );

    // A missing tensor.
    rewrite(&q8_file(), &path("missing.gguf"), |_, tensors| {
        tensors.retain(|t| t.0 != "blk.1.ffn_up.weight");
    });
    let e = load_err(&path("missing.gguf"));
    println!("missing: {e}");
    assert!(
        e.contains("missing.gguf")
            && e.contains("blk.1.ffn_up.weight")
            && e.contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );

    // Metadata that does not fit the tensors.
    rewrite(&q8_file(), &path("shape.gguf"), |meta, _| {
        for (k, v) in meta.iter_mut() {
            if k == "qwen2.feed_forward_length" {
                *v = 128u32.into();
            }
        }
    });
    let e = load_err(&path("shape.gguf"));
    println!("shape: {e}");
    assert!(
        e.contains("shape.gguf") && e.contains("blk.0.ffn_gate.weight") && e.contains("[160, 64]"),
        "{e}"
    );

    // A type that cannot be dequantized (IQ4_NL: 18 bytes per 32 values).
    rewrite(&q8_file(), &path("iq.gguf"), |_, tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "blk.0.ffn_up.weight")
            .unwrap();
        t.1 = GgmlType::IQ4_NL;
        t.3 = vec![0; 64 * 160 / 32 * 18];
    });
    let e = load_err(&path("iq.gguf"));
    println!("type: {e}");
    assert!(
        e.contains("iq.gguf") && e.contains("blk.0.ffn_up.weight") && e.contains("IQ4_NL"),
        "{e}"
    );

    // A NaN in a weight.
    rewrite(&q8_file(), &path("nan.gguf"), |_, tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "output_norm.weight")
            .unwrap();
        t.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = load_err(&path("nan.gguf"));
    println!("nan: {e}");
    assert!(
        e.contains("nan.gguf") && e.contains("output_norm.weight") && e.contains("model.norm"),
        "{e}"
    );

    // A truncated file.
    let bytes = std::fs::read(q8_file()).unwrap();
    std::fs::write(path("cut.gguf"), &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(&path("cut.gguf"));
    assert!(e.contains("cut.gguf"), "{e}");
    println!("truncated: {e}");

    // A split set with a shard missing.
    let split = gguf_dir().join("split");
    std::fs::copy(
        split.join("tiny-chat-q8_0-00001-of-00002.gguf"),
        path("s-00001-of-00002.gguf"),
    )
    .unwrap();
    let e = load_err(&path("s-00001-of-00002.gguf"));
    assert!(e.contains("s-00002-of-00002.gguf"), "{e}");
}

/// `--quantize` reads each matrix a block of rows at a time: the blocks are the rows `load`
/// gives, from safetensors (bf16 here) and from a GGUF (dequantized whole), and a wrong shape
/// is the typed error `load` gives.
#[test]
fn a_row_reader_reads_what_load_reads() {
    let name = "model.layers.0.mlp.down_proj.weight";
    for path in [fixture_dir("tiny-chat"), q8_file()] {
        let ckpt = Checkpoint::open(&path).unwrap();
        let [rows, cols] = [64, 160];
        let whole = ckpt
            .load(
                name,
                &[rows, cols],
                qwen2_burn::core::burn::tensor::FloatDType::F32,
                false,
            )
            .unwrap()
            .into_vec::<f32>()
            .unwrap();
        let reader = ckpt.row_reader(name, [rows, cols]).unwrap();
        let mut got = Vec::new();
        let mut block = Vec::new();
        for start in (0..rows).step_by(7) {
            reader.read(start..(start + 7).min(rows), &mut block);
            got.extend_from_slice(&block);
        }
        assert_eq!(got, whole, "{}", path.display());
        let wrong = ckpt.row_reader(name, [cols, rows]).err();
        assert!(
            matches!(
                wrong,
                Some(Error::TensorShape { .. } | Error::GgufTensor { .. })
            ),
            "{}: {wrong:?}",
            path.display()
        );
    }
}

/// The stored blocks `Checkpoint::quantized` hands the kernels are the file's bytes, whether
/// they were copied into huge pages (where the system has them, as on the development and CI
/// machines) or are read in place from the mapping.
#[test]
fn quantized_blocks_are_the_files_bytes() {
    let path = q8_file();
    let ckpt = Checkpoint::open(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let mut checked = 0;
    for view in file.tensors() {
        if view.ggml_type() == GgmlType::F32 {
            continue;
        }
        let Some(hf) = qwen2_burn::core::gguf::hf_name(view.name()) else {
            continue;
        };
        let (ty, bytes) = ckpt.quantized(&hf, &view.shape()).unwrap().unwrap();
        assert_eq!(ty, view.ggml_type(), "{hf}");
        assert_eq!(bytes.as_slice(), view.data(), "{hf}");
        if qwen2_burn::core::qwen2_quant::huge_pages_wanted() {
            // A copy: arena slots start on cache lines (the file aligns data to 32 bytes).
            assert_eq!(bytes.as_slice().as_ptr() as usize % 64, 0, "{hf}");
        }
        checked += 1;
    }
    assert!(checked > 5, "{checked} quantized tensors");
    println!(
        "huge pages {}",
        if qwen2_burn::core::qwen2_quant::huge_pages_wanted() {
            "wanted: the blocks were copied"
        } else {
            "not available: the blocks were read in place"
        }
    );
}
