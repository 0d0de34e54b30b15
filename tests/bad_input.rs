//! Bad input gets a typed error that names the file, tensor or field — never a panic.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use qwen2_burn::core::generate::{generate, GenerateOptions};
use qwen2_burn::core::sampling::SamplingParams;
use qwen2_burn::core::{Error, LogitsFor, Platform, PrecisionPlan, Qwen2Model};
use qwen2_burn::cpu::Cpu;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A writable copy of a fixture.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn try_load(dir: &Path) -> Result<Qwen2Model<B>, Error> {
    Qwen2Model::load(dir, PrecisionPlan::F32, &Cpu::devices().remove(0))
}

fn load_err(dir: &Path) -> Error {
    match try_load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

/// Rewrites `model.safetensors` in `dir` after `edit` has changed the tensor list.
fn rewrite_weights(
    dir: &Path,
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, data))| (n.clone(), TensorView::new(*d, s.clone(), data).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let tmp = copy_fixture("untied-bf16-mqa");
    rewrite_weights(tmp.path(), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::MissingTensor { .. }), "{e:?}");
    assert!(
        e.to_string().contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn missing_lm_head_of_untied_model_is_named() {
    let tmp = copy_fixture("untied-bf16-mqa");
    rewrite_weights(tmp.path(), |t| {
        t.remove("lm_head.weight");
    });
    let e = load_err(tmp.path());
    assert!(e.to_string().contains("lm_head.weight"), "{e}");
    assert!(e.to_string().contains("tie_word_embeddings"), "{e}");
}

#[test]
fn misshaped_tensor_names_tensor_file_and_shapes() {
    let tmp = copy_fixture("tied-f32-gqa");
    rewrite_weights(tmp.path(), |t| {
        let (_, shape, data) = t.get_mut("model.layers.0.self_attn.k_proj.weight").unwrap();
        *shape = vec![shape[0] / 2, shape[1]];
        data.truncate(data.len() / 2);
    });
    let e = load_err(tmp.path());
    match &e {
        Error::TensorShape {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "model.layers.0.self_attn.k_proj.weight");
            assert_eq!(expected, &vec![32, 64]);
            assert_eq!(found, &vec![16, 64]);
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn integer_tensor_is_refused_with_its_dtype() {
    let tmp = copy_fixture("tied-f32-gqa");
    rewrite_weights(tmp.path(), |t| {
        t.get_mut("model.norm.weight").unwrap().0 = Dtype::I32;
    });
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::TensorDtype { .. }), "{e:?}");
    assert!(
        e.to_string().contains("model.norm.weight") && e.to_string().contains("I32"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors_is_reported_as_corrupt() {
    let tmp = copy_fixture("tied-f32-gqa");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::Safetensors { .. }), "{e:?}");
    assert!(
        e.to_string().contains("model.safetensors") && e.to_string().contains("truncated"),
        "{e}"
    );
}

#[test]
fn garbage_header_is_reported_as_corrupt() {
    let tmp = copy_fixture("tied-f32-gqa");
    let path = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..40].copy_from_slice(&[b'#'; 32]);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Safetensors { .. }));
    std::fs::write(&path, b"short").unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Safetensors { .. }));
}

#[test]
fn missing_shard_names_the_file() {
    let tmp = copy_fixture("sharded-f16");
    std::fs::remove_file(tmp.path().join("model-00002-of-00003.safetensors")).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(
        e.to_string().contains("model-00002-of-00003.safetensors"),
        "{e}"
    );
}

#[test]
fn shard_index_pointing_to_wrong_shard_is_reported() {
    let tmp = copy_fixture("sharded-f16");
    let path = tmp.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let map = v["weight_map"].as_object_mut().unwrap();
    let name = map
        .iter()
        .find(|(_, f)| f.as_str() != Some("model-00001-of-00003.safetensors"))
        .map(|(n, _)| n.clone())
        .unwrap();
    map.insert(name.clone(), "model-00001-of-00003.safetensors".into());
    std::fs::write(&path, v.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::MissingTensor { .. }), "{e:?}");
    assert!(e.to_string().contains(&name), "{e}");
}

#[test]
fn no_weights_at_all_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir("tied-f32-gqa").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let e = load_err(tmp.path());
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn bad_json_names_the_config() {
    let tmp = copy_fixture("tied-f32-gqa");
    std::fs::write(tmp.path().join("config.json"), "{ \"hidden_size\": 64,").unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::Json { .. }), "{e:?}");
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn missing_config_field_is_named() {
    let tmp = copy_fixture("tied-f32-gqa");
    edit_config(tmp.path(), |v| {
        v.as_object_mut().unwrap().remove("intermediate_size");
    });
    let e = load_err(tmp.path());
    assert!(
        matches!(&e, Error::Config { field, .. } if field == "intermediate_size"),
        "{e:?}"
    );
}

#[test]
fn unsupported_architecture_is_refused() {
    let tmp = copy_fixture("tied-f32-gqa");
    edit_config(tmp.path(), |v| {
        v["architectures"] = serde_json::json!(["LlamaForCausalLM"])
    });
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("LlamaForCausalLM"), "{e}");
}

#[test]
fn enabled_sliding_window_is_refused() {
    let tmp = copy_fixture("tied-f32-gqa");
    edit_config(tmp.path(), |v| {
        v["use_sliding_window"] = true.into();
        v["sliding_window"] = 16.into();
    });
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("sliding"), "{e}");
}

#[test]
fn unknown_rope_type_is_refused() {
    let tmp = copy_fixture("tied-f32-gqa");
    edit_config(tmp.path(), |v| {
        v["rope_parameters"] = serde_json::json!({"rope_type": "longrope", "rope_theta": 10000.0});
    });
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("longrope"), "{e}");
}

#[test]
fn token_id_outside_vocabulary_is_refused() {
    let model = load("tied-f32-gqa", PrecisionPlan::F32);
    let mut cache = model.new_cache(8);
    let e = model
        .forward(&[1, 2, 320], &mut cache, LogitsFor::Last)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                id: 320,
                position: 2,
                vocab_size: 320
            }
        ),
        "{e:?}"
    );
    assert_eq!(cache.len(), 0, "a refused call must not touch the cache");
}

#[test]
fn empty_prompt_is_refused() {
    let model = load("tied-f32-gqa", PrecisionPlan::F32);
    let mut cache = model.new_cache(8);
    assert!(matches!(
        model.forward(&[], &mut cache, LogitsFor::Last),
        Err(Error::EmptyInput)
    ));
}

#[test]
fn prompt_longer_than_context_is_refused() {
    let model = load("tied-f32-gqa", PrecisionPlan::F32);
    assert_eq!(model.context_length(), 256);
    let ids = vec![1u32; 257];
    let mut cache = model.new_cache(1000);
    let e = model
        .forward(&ids, &mut cache, LogitsFor::Last)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ContextOverflow {
                requested: 257,
                capacity: 256,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");

    let opts = GenerateOptions {
        max_new_tokens: 10,
        sampling: SamplingParams::greedy(),
        eos_token_ids: vec![],
        monitor: Some(qwen2_burn::core::monitor::MonitorMode::Cheap),
        ..GenerateOptions::greedy(0)
    };
    let e = generate(&model, &vec![1u32; 250], &opts, |_| {}).unwrap_err();
    assert!(matches!(e, Error::ContextOverflow { .. }), "{e:?}");
}

#[test]
fn overfull_kv_cache_is_refused() {
    let model = load("tied-f32-gqa", PrecisionPlan::F32);
    let mut cache = model.new_cache(4);
    model
        .forward(&[1, 2, 3], &mut cache, LogitsFor::Last)
        .unwrap();
    let e = model
        .forward(&[4, 5], &mut cache, LogitsFor::Last)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ContextOverflow {
                requested: 5,
                capacity: 4,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("KV cache"), "{e}");
}

#[test]
fn nan_in_the_weights_is_a_broken_checkpoint_naming_the_tensor() {
    let tmp = copy_fixture("untied-bf16-mqa");
    rewrite_weights(tmp.path(), |t| {
        let (_, _, data) = t.get_mut("model.layers.1.mlp.down_proj.weight").unwrap();
        data[6..8].copy_from_slice(&0x7FC0u16.to_le_bytes()); // bf16 NaN
        data[10..12].copy_from_slice(&0xFF80u16.to_le_bytes()); // bf16 -inf
    });
    let e = load_err(tmp.path());
    let text = e.to_string();
    assert!(
        matches!(&e, Error::BrokenTensor { name, count: 2, .. } if name == "model.layers.1.mlp.down_proj.weight"),
        "{text}"
    );
    assert!(
        text.contains("checkpoint is broken") && !text.contains("--precision f"),
        "{text}"
    );
}
