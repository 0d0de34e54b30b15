//! Shared helpers of the integration tests: fixtures and their HF goldens.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use qwen2_burn::core::burn::tensor::FloatDType;
use qwen2_burn::core::{Platform, PrecisionPlan, Qwen2Model};
use qwen2_burn::cpu::Cpu;

pub type B = <Cpu as Platform>::B;

/// Every fixture made by scripts/make_fixtures.py.
pub const FIXTURES: &[&str] = &[
    "tied-f32-gqa",
    "untied-bf16-mqa",
    "sharded-f16",
    "yarn-f32",
    "massive-1e5",
    "massive-2e4",
];

/// The fixtures without planted massive activations.
pub const NORMAL_FIXTURES: &[&str] =
    &["tied-f32-gqa", "untied-bf16-mqa", "sharded-f16", "yarn-f32"];

/// `goldens.json` of a fixture.
pub fn facts(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir(name).join("goldens.json")).unwrap())
        .unwrap()
}

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A JSON array of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A number recorded in `goldens.json` (e.g. `hf_bf16_max_abs_err`); `None` when null.
pub fn hf_err(name: &str, key: &str) -> Option<f32> {
    facts(name)[key].as_f64().map(|v| v as f32)
}

/// HF goldens of one fixture.
pub struct Goldens {
    /// HF's own bf16 run, `[P, V]`.
    pub logits_all_bf16: Vec<f32>,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    /// `[P, V]`, row-major.
    pub logits_all: Vec<f32>,
    /// `[L + 1, P, H]`, row-major.
    pub hidden_states: Vec<f32>,
    pub hidden_shape: Vec<usize>,
    pub vocab: usize,
}

pub fn goldens(name: &str) -> Goldens {
    let dir = fixture_dir(name);
    let facts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap()).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        facts[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let bytes = std::fs::read(dir.join("goldens.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |key: &str| -> (Vec<f32>, Vec<usize>) {
        let t = st.tensor(key).unwrap();
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (v, t.shape().to_vec())
    };
    let (logits_all, lshape) = f32s("logits_all");
    let (hidden_states, hidden_shape) = f32s("hidden_states");
    Goldens {
        logits_all_bf16: f32s("logits_all_bf16").0,
        prompt_ids: ids("prompt_ids"),
        greedy_ids: ids("greedy_ids"),
        logits_all,
        hidden_states,
        hidden_shape,
        vocab: lshape[1],
    }
}

pub fn load(name: &str, plan: PrecisionPlan) -> Qwen2Model<B> {
    let device = Cpu::devices().remove(0);
    Cpu::load_model(fixture_dir(name), plan, &device, &mut |_, _| {}).unwrap()
}

pub fn to_f32(t: qwen2_burn::core::burn::prelude::Tensor<B, 2>) -> Vec<f32> {
    t.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `tests/fixtures/train`: the fine-tuning goldens of scripts/make_train_fixtures.py.
pub fn train_dir() -> PathBuf {
    fixture_dir("train")
}

/// `tests/fixtures/train/goldens.json`.
pub fn train_goldens() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(train_dir().join("goldens.json")).unwrap())
        .unwrap()
}

/// The PyTorch reference run's options for `kind` (`full` or `lora`), writing to `out`.
pub fn train_options(
    kind: &str,
    precision: qwen2_burn::train::TrainPrecision,
    out: &Path,
) -> qwen2_burn::train::FinetuneOptions {
    use qwen2_burn::train::{FinetuneOptions, Length, LoraOptions};
    let g = train_goldens();
    let run = &g[kind];
    let mut o = FinetuneOptions::new(
        fixture_dir(g["base"].as_str().unwrap()),
        train_dir().join(g["data"].as_str().unwrap()),
        out,
    );
    let int = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
    o.batch_size = int(&g["batch_size"]);
    o.grad_accum = int(&g["grad_accum"]);
    o.length = Length::Steps(int(&g["steps"]));
    o.lr_schedule = g["lr_schedule"].as_str().unwrap().parse().unwrap();
    o.warmup_steps = int(&g["warmup_steps"]);
    o.lr = run["lr"].as_f64().unwrap();
    o.adamw.weight_decay = run["weight_decay"].as_f64().unwrap();
    o.max_grad_norm = run["max_grad_norm"].as_f64().unwrap();
    o.precision = precision;
    if kind == "lora" {
        o.lora = Some(LoraOptions {
            r: int(&run["r"]),
            alpha: run["alpha"].as_f64().unwrap(),
            dropout: 0.0,
            targets: run["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect(),
        });
        o.init_adapter = Some(train_dir().join("lora-init"));
    }
    o
}
