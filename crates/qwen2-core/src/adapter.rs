//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`): read, checked
//! against the base model, and attached to its projections for inference or further training.

use std::path::{Path, PathBuf};

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{LoraAdapter, Qwen2Model};
use crate::weights::Checkpoint;

/// The adapter weights file PEFT writes.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config file PEFT writes.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The prefix PEFT puts before the base model's parameter names.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The fields of PEFT's `adapter_config.json` this crate reads and writes (others are kept
/// when reading and ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `LORA`.
    pub peft_type: String,
    /// Rank.
    pub r: usize,
    /// Scale numerator: `scale = lora_alpha / r` (or `/ √r` with `use_rslora`).
    pub lora_alpha: f64,
    /// Dropout on the adapter input during training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names the adapter targets (`q_proj`, ...).
    #[serde(default)]
    pub target_modules: serde_json::Value,
    /// Rank-stabilised scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// Must be false (weights stored `[out, in]`).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Must be `none`.
    #[serde(default = "bias_none")]
    pub bias: String,
    /// Must be empty: full copies of other modules are not supported.
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
    /// Where the base model came from (informational).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// All other fields, kept as they were.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

fn bias_none() -> String {
    "none".into()
}

impl AdapterConfig {
    /// The multiplier of `B A`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// An adapter directory, read and checked.
pub struct Adapter {
    /// The directory.
    pub dir: PathBuf,
    /// Its config.
    pub config: AdapterConfig,
    weights: Checkpoint,
}

impl Adapter {
    /// Opens `dir` (a PEFT LoRA adapter directory).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let bad = |message: String| Error::Adapter {
            path: dir.clone(),
            message,
        };
        if !dir.is_dir() {
            return Err(bad("not a directory".into()));
        }
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: AdapterConfig = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: cfg_path.clone(),
            source,
        })?;
        if config.peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type is {:?}; only LORA adapters are supported",
                config.peft_type
            )));
        }
        if config.fan_in_fan_out || config.bias != "none" {
            return Err(bad(
                "fan_in_fan_out adapters and adapters with trained biases are not supported".into(),
            ));
        }
        if matches!(&config.modules_to_save, Some(v) if !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(bad("modules_to_save is not supported".into()));
        }
        if config.r == 0 {
            return Err(bad("r must be at least 1".into()));
        }
        let weights = Checkpoint::open_file(dir.join(ADAPTER_WEIGHTS))?;
        Ok(Adapter {
            dir,
            config,
            weights,
        })
    }

    /// Attaches the adapter to `model`'s projections, the adapter weights stored in `dtype`.
    /// Every tensor of the file must belong to a projection of this model with matching
    /// shapes, or the adapter is refused as made for another base model. Returns how many
    /// projections were adapted.
    pub fn attach<B: Backend>(
        &self,
        model: &mut Qwen2Model<B>,
        dtype: FloatDType,
    ) -> Result<usize> {
        let bad = |message: String| Error::Adapter {
            path: self.dir.clone(),
            message,
        };
        let mut used = std::collections::HashSet::new();
        let mut failure = None;
        let r = self.config.r;
        let scale = self.config.scale();
        let device = model.device().clone();
        model.visit_linears(&mut |prefix, lin| {
            if failure.is_some() {
                return;
            }
            let a_name = format!("{PEFT_PREFIX}{prefix}.lora_A.weight");
            let b_name = format!("{PEFT_PREFIX}{prefix}.lora_B.weight");
            let (has_a, has_b) = (
                self.weights.contains(&a_name),
                self.weights.contains(&b_name),
            );
            if !has_a && !has_b {
                return;
            }
            let [inp, out] = lin.shape();
            let load = |name: &str, shape: [usize; 2]| -> Result<Tensor<B, 2>> {
                let data = self.weights.load(name, &shape, dtype, false)?;
                Ok(Tensor::from_data(data, (&device, dtype.into())))
            };
            match (load(&a_name, [r, inp]), load(&b_name, [out, r])) {
                (Ok(a), Ok(b)) => {
                    lin.lora = Some(LoraAdapter {
                        a,
                        b,
                        scale,
                        dropout: None,
                    });
                    used.insert(a_name.clone());
                    used.insert(b_name.clone());
                }
                (Err(e), _) | (_, Err(e)) => failure = Some(e),
            }
        });
        if let Some(e) = failure {
            return Err(match e {
                Error::TensorShape {
                    name,
                    expected,
                    found,
                    ..
                } => bad(format!(
                    "{name} is {found:?} but this base model needs {expected:?}: the adapter was made for another base model"
                )),
                other => other,
            });
        }
        let mut unused: Vec<&str> = self
            .weights
            .names()
            .filter(|n| !used.contains(*n))
            .collect();
        if !unused.is_empty() {
            unused.sort();
            return Err(bad(format!(
                "{} of its tensors do not belong to a projection of this model (first: {}): \
                 the adapter was made for another base model",
                unused.len(),
                unused[0]
            )));
        }
        let used = used.len();
        tracing::info!(adapter = %self.dir.display(), projections = used / 2, r, scale, "LoRA adapter attached");
        Ok(used / 2)
    }
}
