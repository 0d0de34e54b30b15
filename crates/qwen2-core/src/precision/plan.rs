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
    /// Inputs and outputs of the projections (q/k/v/o, gate/up/down, lm_head) and of `probs @ v`.
    pub matmul: FloatDType,
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

/// The named policies a user can ask for with `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Everything f32.
    F32,
}

impl Policy {
    /// All named policies.
    pub const ALL: &'static [Policy] = &[Policy::F32];

    /// The policy's `--precision` name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::F32 => "f32",
        }
    }

    /// The plan the policy stands for.
    pub fn plan(self) -> PrecisionPlan {
        match self {
            Policy::F32 => PrecisionPlan::F32,
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
