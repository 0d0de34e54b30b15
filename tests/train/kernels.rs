//! Each of the CPU's training ops against burn's generic graph: the step-0 loss and the
//! gradient of every weight with one op switched to its kernel at a time, on a padded batch of
//! records of odd lengths (the train fixture's first step: batch 2, 5–24 tokens), for GQA
//! (`tied-f32-gqa`, 4 heads over 2), MQA (`untied-bf16-mqa`, 4 over 1) and MHA (the GQA model
//! with its key/value heads repeated, 4 over 4).
//!
//! Tolerances, as max |Δ| over a tensor ÷ max |g| of the generic gradient: f32 1e-4 (the ops
//! sum in other orders); bf16 3e-2 (the generic graph rounds to bf16 between its nodes, the
//! kernels keep f32 inside an op and round its outputs; PyTorch's own bf16 gradients differ
//! from its f32 ones by more). LoRA in bf16 checks the frozen-weight path of the projections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common;

use common::{fixture_dir, train_options as options};
use qwen2_burn::core::burn::prelude::Tensor;
use qwen2_burn::core::burn::tensor::FloatDType;
use qwen2_burn::core::model::{Batch, FusedKernels};
use qwen2_burn::core::precision::PrecisionPlan;
use qwen2_burn::core::train_kernels::TrainingKernels;
use qwen2_burn::core::Platform;
use qwen2_burn::cpu::train::TrainFused;
use qwen2_burn::cpu::Cpu;
use qwen2_burn::train::{Autodiff, TrainPrecision, Trainer};

type T = Autodiff<common::B>;

/// One op of the CPU's training kernels.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Projections,
    Norm,
    Attention,
    Swiglu,
    Loss,
}

/// [`TrainFused`] with only `op` switched on.
struct Only(Op);

impl FusedKernels<T> for Only {
    fn swiglu_supported(&self, dtype: FloatDType) -> bool {
        self.0 == Op::Swiglu && TrainFused.swiglu_supported(dtype)
    }

    fn swiglu(&self, gate: &Tensor<T, 2>, up: &Tensor<T, 2>) -> Tensor<T, 2> {
        TrainFused.swiglu(gate, up)
    }

    fn rms_norm(
        &self,
        x: &Tensor<T, 2>,
        weight: &Tensor<T, 1>,
        eps: f64,
        norm: FloatDType,
        out: FloatDType,
    ) -> Option<Tensor<T, 2>> {
        (self.0 == Op::Norm)
            .then(|| TrainFused.rms_norm(x, weight, eps, norm, out))
            .flatten()
    }

    fn attention_rows(
        &self,
        q: &Tensor<T, 2>,
        k: &Tensor<T, 2>,
        v: &Tensor<T, 2>,
        rows: &Batch,
        heads: usize,
        start: usize,
        cos: &Tensor<T, 2>,
        sin: &Tensor<T, 2>,
        plan: &PrecisionPlan,
    ) -> Option<Tensor<T, 2>> {
        (self.0 == Op::Attention)
            .then(|| TrainFused.attention_rows(q, k, v, rows, heads, start, cos, sin, plan))
            .flatten()
    }

    fn cross_entropy_sum(&self, logits: &Tensor<T, 2>, targets: &[u32]) -> Option<Tensor<T, 1>> {
        (self.0 == Op::Loss)
            .then(|| TrainFused.cross_entropy_sum(logits, targets))
            .flatten()
    }

    fn attention_supported(&self, _plan: &PrecisionPlan) -> bool {
        false
    }

    fn rope(
        &self,
        x: &Tensor<T, 2>,
        heads: usize,
        cos: &Tensor<T, 2>,
        sin: &Tensor<T, 2>,
        start: usize,
    ) -> Tensor<T, 2> {
        TrainFused.rope(x, heads, cos, sin, start)
    }

    fn attention(
        &self,
        q: &Tensor<T, 2>,
        keys: &Tensor<T, 3>,
        values: &Tensor<T, 3>,
        start: usize,
        plan: &PrecisionPlan,
    ) -> Tensor<T, 2> {
        TrainFused.attention(q, keys, values, start, plan)
    }
}

/// The GQA fixture with every key/value head repeated for the query heads that share it: an
/// MHA model computing the same function.
fn mha_model(dir: &Path) -> PathBuf {
    use safetensors::tensor::{Dtype, TensorView};
    let src = fixture_dir("tied-f32-gqa");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let (heads, kv) = (
        config["num_attention_heads"].as_u64().unwrap() as usize,
        config["num_key_value_heads"].as_u64().unwrap() as usize,
    );
    let head_dim = config["hidden_size"].as_u64().unwrap() as usize / heads;
    config["num_key_value_heads"] = heads.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        let mut shape = view.shape().to_vec();
        let data = view.data().to_vec();
        let data = if name.contains("k_proj") || name.contains("v_proj") {
            // Rows are kv heads of head_dim rows each (a bias: head_dim values each).
            let row = data.len() / shape[0];
            let mut out = Vec::with_capacity(data.len() * heads / kv);
            for h in 0..heads {
                let g = h / (heads / kv);
                out.extend_from_slice(&data[g * head_dim * row..(g + 1) * head_dim * row]);
            }
            shape[0] = shape[0] * heads / kv;
            out
        } else {
            data
        };
        tensors.push((name.to_string(), shape, data));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// Step-0 loss and gradients of `model` (the train fixture's options otherwise) with `op` on
/// its kernel, or on the generic graph for `None`.
fn gradients(
    kind: &str,
    model: &Path,
    precision: TrainPrecision,
    op: Option<Op>,
) -> (f64, Vec<Vec<f32>>) {
    let out = tempfile::tempdir().unwrap();
    let mut o = options(kind, precision, out.path());
    if o.model != model {
        // The fixture's starting adapter fits the train base only: PEFT's initialisation here.
        o.init_adapter = None;
        o.model = model.to_path_buf();
    }
    let t = Trainer::<T>::new(o, &Default::default()).unwrap();
    let mut t = match op {
        None => t,
        Some(Op::Projections) => t.with_kernels(TrainingKernels {
            matmul: Cpu::training_kernels().matmul,
            ..Default::default()
        }),
        Some(op) => t.with_kernels(TrainingKernels {
            fused: Some(Arc::new(Only(op))),
            ..Default::default()
        }),
    };
    let (loss, grads) = t.gradients().unwrap();
    let grads = grads
        .into_iter()
        .map(|g| {
            g.expect("every weight gets a gradient")
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        })
        .collect();
    (loss, grads)
}

fn check(kind: &str, model: &Path, precision: TrainPrecision, tolerance: f64) {
    let (loss, want) = gradients(kind, model, precision, None);
    for op in [
        Op::Projections,
        Op::Norm,
        Op::Attention,
        Op::Swiglu,
        Op::Loss,
    ] {
        let (l, got) = gradients(kind, model, precision, Some(op));
        let what = format!("{} {kind} {precision:?} {op:?}", model.display());
        assert!(
            (l - loss).abs() <= tolerance * loss.abs(),
            "{what}: loss {l} vs generic {loss}"
        );
        let mut worst = 0f64;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64;
            let r = if scale == 0.0 { diff } else { diff / scale };
            assert!(
                r <= tolerance,
                "{what}: tensor {i} differs by {r:.2e} (relative)"
            );
            worst = worst.max(r);
        }
        eprintln!(
            "{what}: loss Δ {:.1e}, worst gradient {worst:.1e}",
            (l - loss).abs()
        );
    }
}

#[test]
fn each_training_op_matches_the_generic_graph_gqa() {
    let dir = fixture_dir("tied-f32-gqa");
    check("full", &dir, TrainPrecision::F32, 1e-4);
    check("full", &dir, TrainPrecision::Bf16, 3e-2);
    check("lora", &dir, TrainPrecision::Bf16, 3e-2);
}

#[test]
fn each_training_op_matches_the_generic_graph_mqa() {
    let dir = fixture_dir("untied-bf16-mqa");
    check("full", &dir, TrainPrecision::F32, 1e-4);
    check("lora", &dir, TrainPrecision::Bf16, 3e-2);
}

#[test]
fn each_training_op_matches_the_generic_graph_mha() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = mha_model(tmp.path());
    check("full", &dir, TrainPrecision::F32, 1e-4);
    check("full", &dir, TrainPrecision::Bf16, 3e-2);
}
