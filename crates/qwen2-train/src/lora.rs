//! Attaching fresh LoRA adapters for training, and saving them in PEFT's format.

use std::path::Path;

use burn::prelude::Backend;
use qwen2_core::adapter::{AdapterConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX};
use qwen2_core::model::{LoraAdapter, LoraDropout, Qwen2Model, WeightKind, WeightMut};
use qwen2_core::sampling::SplitMix64;

use crate::error::{Result, TrainError};
use crate::save::{write_atomic, SafetensorsWriter};

/// The projections LoRA can adapt, by HF module name.
pub const LORA_TARGETS: [&str; 8] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
];

/// The default targets: every projection of the decoder layers (all but `lm_head`).
pub const DEFAULT_TARGETS: &[&str] = LORA_TARGETS.split_at(7).0;

/// LoRA hyper-parameters (PEFT's names and defaults of this project's CLI).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraOptions {
    /// Rank.
    pub r: usize,
    /// `scale = alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter input (seeded).
    pub dropout: f64,
    /// Module names to adapt (`q_proj`, ...).
    pub targets: Vec<String>,
}

impl Default for LoraOptions {
    fn default() -> Self {
        LoraOptions {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraOptions {
    /// Checks the values and the target names.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(TrainError::option("--lora-r", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(TrainError::option("--lora-dropout", "must be in [0, 1)"));
        }
        if self.targets.is_empty() {
            return Err(TrainError::option("--lora-targets", "names no module"));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            return Err(TrainError::option(
                "--lora-targets",
                format!("unknown module '{t}' (known: {})", LORA_TARGETS.join(", ")),
            ));
        }
        Ok(())
    }

    /// Whether the projection at HF path `prefix` is a target.
    pub fn targets_path(&self, prefix: &str) -> bool {
        let module = prefix.rsplit('.').next().unwrap_or(prefix);
        self.targets.iter().any(|t| t == module)
    }

    /// PEFT's `adapter_config.json` for these options.
    pub fn adapter_config(&self, base: &str) -> AdapterConfig {
        let mut targets = self.targets.clone();
        targets.sort();
        let rest = serde_json::json!({
            "task_type": "CAUSAL_LM",
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": false,
            "revision": null,
        });
        AdapterConfig {
            peft_type: "LORA".into(),
            r: self.r,
            lora_alpha: self.alpha,
            lora_dropout: self.dropout,
            target_modules: targets.into(),
            use_rslora: false,
            fan_in_fan_out: false,
            bias: "none".into(),
            modules_to_save: None,
            base_model_name_or_path: Some(base.to_string()),
            rest: rest.as_object().cloned().unwrap_or_default(),
        }
    }
}

/// Attaches fresh adapters (PEFT init, f32) to every targeted projection; returns how many.
/// A target the model does not have (e.g. `lm_head` on a tied model) is an error.
pub fn attach_fresh<B: Backend>(
    model: &mut Qwen2Model<B>,
    opts: &LoraOptions,
    seed: u64,
) -> Result<usize> {
    let mut rng = SplitMix64(seed ^ 0x4C6F_5241);
    let device = model.device().clone();
    let mut count = 0;
    let mut seen = std::collections::HashSet::new();
    model.visit_linears(&mut |prefix, lin| {
        if !opts.targets_path(prefix) {
            return;
        }
        seen.insert(prefix.rsplit('.').next().unwrap_or(prefix).to_string());
        let [inp, out] = lin.shape();
        lin.lora = Some(LoraAdapter::init(
            inp, out, opts.r, opts.alpha, &mut rng, &device,
        ));
        count += 1;
    });
    if let Some(missing) = opts.targets.iter().find(|t| !seen.contains(*t)) {
        return Err(TrainError::option(
            "--lora-targets",
            format!("this model has no '{missing}' projection (tied embeddings have no separate lm_head)"),
        ));
    }
    Ok(count)
}

/// Gives every adapter input dropout `p` (inactive until the trainer switches it on).
pub fn set_dropout<B: Backend>(model: &mut Qwen2Model<B>, p: f64, seed: u64) {
    if p <= 0.0 {
        return;
    }
    let mut i = 0u64;
    model.visit_linears(&mut |_, lin| {
        if let Some(lora) = &mut lin.lora {
            lora.dropout = Some(LoraDropout::new(p, seed.wrapping_add(i)));
            i += 1;
        }
    });
}

/// Switches adapter dropout on for one micro-batch, seeded by `seed` (a function of the
/// run's seed, the step and the micro-batch, so a resumed run draws the same masks), or off.
pub fn arm_dropout<B: Backend>(model: &mut Qwen2Model<B>, active: bool, seed: u64) {
    let mut i = 0u64;
    model.visit_linears(&mut |_, lin| {
        if let Some(d) = lin.lora.as_ref().and_then(|l| l.dropout.as_ref()) {
            d.set(
                active,
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i),
            );
            i += 1;
        }
    });
}

/// Writes the model's adapters to `dir` in PEFT's format: `adapter_model.safetensors` (f32,
/// `base_model.model.<path>.lora_A.weight` / `lora_B.weight`) and `adapter_config.json`.
pub fn save_adapter<B: Backend>(
    model: &mut Qwen2Model<B>,
    opts: &LoraOptions,
    base: &str,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut w = SafetensorsWriter::default();
    model.visit_weights(&mut |name, kind, t| {
        if kind == WeightKind::Base {
            return;
        }
        if let WeightMut::Matrix(t) = t {
            w.add_f32(&format!("{PEFT_PREFIX}{name}"), t);
        }
    });
    w.write(&dir.join(ADAPTER_WEIGHTS), None)?;
    let config = serde_json::to_string_pretty(&opts.adapter_config(base))
        .expect("adapter config serializes");
    write_atomic(&dir.join(ADAPTER_CONFIG), config.as_bytes())
}
