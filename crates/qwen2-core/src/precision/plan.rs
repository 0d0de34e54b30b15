//! [`PrecisionPlan`]: one dtype per role of the Qwen2 graph. The graph casts explicitly at every
//! boundary between two roles, so a plan computes exactly what it says.

use std::fmt;
use std::str::FromStr;

use burn::tensor::FloatDType;

/// A dtype for each role of the graph.
///
/// RoPE tables are always computed and applied in f32 (they are not a role here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrecisionPlan {
    /// Storage of the weight matrices, embeddings and biases.
    pub weights: FloatDType,
    /// Inputs and outputs of the projections (q/k/v, gate/up, lm_head) and of `probs @ v`.
    pub matmul: FloatDType,
    /// Output of the projections that write into the residual stream (`o_proj`, `down_proj`).
    /// When wider than `matmul`, those two run with their inputs and weights widened, so a
    /// massive activation never exists in the narrow dtype (f16 storage, f32 accumulation and output).
    pub residual_projection: FloatDType,
    /// The residual stream between layers (where massive activations live).
    pub residual: FloatDType,
    /// RMSNorm's mean of squares and normalisation.
    pub norm: FloatDType,
    /// QK^T scores.
    pub attention_scores: FloatDType,
    /// The softmax over the scores.
    pub softmax: FloatDType,
    /// Keys and values kept in the KV cache.
    pub kv_cache: FloatDType,
    /// The logits handed to the sampler.
    pub logits: FloatDType,
}

impl PrecisionPlan {
    /// Everything in f32.
    pub const F32: PrecisionPlan = PrecisionPlan::uniform(FloatDType::F32);

    /// The same dtype for every role.
    pub const fn uniform(dtype: FloatDType) -> Self {
        PrecisionPlan {
            weights: dtype,
            matmul: dtype,
            residual_projection: dtype,
            residual: dtype,
            norm: dtype,
            attention_scores: dtype,
            softmax: dtype,
            kv_cache: dtype,
            logits: dtype,
        }
    }

    /// Every dtype the plan uses, without repeats.
    pub fn dtypes(&self) -> Vec<FloatDType> {
        let mut out: Vec<FloatDType> = Vec::new();
        for d in [
            self.weights,
            self.matmul,
            self.residual_projection,
            self.residual,
            self.norm,
            self.attention_scores,
            self.softmax,
            self.kv_cache,
            self.logits,
        ] {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }
}

/// The named policies a user can ask for with `--precision` (`auto` is resolved by a backend's
/// policy table into one of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Everything f32.
    F32,
    /// bf16 storage and compute; norms, softmax, RoPE and logits in f32 (as HF runs bf16).
    Bf16,
    /// The naive f16 plan HF runs with `dtype=torch.float16`: f16 storage, matmuls, residual
    /// stream and attention scores; norms, softmax, RoPE and logits in f32. Reproduces the
    /// field bug (overflow to inf in `mlp.down_proj` and the residual stream); kept for diagnosis.
    F16,
    /// f16 weights and matmuls; the residual stream, the projections writing into it, norms,
    /// QK^T + softmax, RoPE and logits in f32.
    F16Safe,
}

impl Policy {
    /// All named policies, safest last.
    pub const ALL: &'static [Policy] = &[Policy::F16, Policy::Bf16, Policy::F16Safe, Policy::F32];

    /// The policy's `--precision` name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::F32 => "f32",
            Policy::Bf16 => "bf16",
            Policy::F16 => "f16",
            Policy::F16Safe => "f16-safe",
        }
    }

    /// The plan the policy stands for.
    pub fn plan(self) -> PrecisionPlan {
        use FloatDType::{BF16, F16, F32};
        match self {
            Policy::F32 => PrecisionPlan::F32,
            Policy::Bf16 => PrecisionPlan {
                norm: F32,
                softmax: F32,
                logits: F32,
                ..PrecisionPlan::uniform(BF16)
            },
            Policy::F16 => PrecisionPlan {
                norm: F32,
                softmax: F32,
                logits: F32,
                ..PrecisionPlan::uniform(F16)
            },
            Policy::F16Safe => PrecisionPlan {
                weights: F16,
                matmul: F16,
                residual_projection: F32,
                residual: F32,
                norm: F32,
                attention_scores: F32,
                softmax: F32,
                kv_cache: F16,
                logits: F32,
            },
        }
    }

    /// The next safer policy to fall back to when this one produced a non-finite value.
    pub fn safer(self) -> Option<Policy> {
        match self {
            Policy::F16 => Some(Policy::F16Safe),
            Policy::Bf16 | Policy::F16Safe => Some(Policy::F32),
            Policy::F32 => None,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .iter()
            .copied()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Policy::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown precision policy `{s}` (known: {})",
                    names.join(", ")
                )
            })
    }
}
