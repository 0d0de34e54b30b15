//! Training policies: what a fine-tuning run computes in (master weights and optimizer state
//! are f32 in every one), and the rows of each backend's table that pick one for `auto`.

use std::fmt;
use std::str::FromStr;

use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

use super::hardware::Hardware;
use super::plan::{Policy, PrecisionPlan};
use super::table::{can_run, PolicyTable};
use crate::error::{Error, Result};

/// How a run trains numerically. Trained weights and optimizer state are f32 in every policy
/// (master weights); the policy decides what the forward and backward passes compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrainPolicy {
    /// Everything in f32.
    F32,
    /// bf16 compute per the inference `bf16` plan (norms, softmax, logits and loss in f32).
    Bf16,
    /// f16 compute per the inference `f16-safe` plan (residual stream, the projections writing
    /// into it, norms, QKᵀ, softmax, logits and loss in f32) with dynamic loss scaling.
    F16Scaled,
    /// The naive f16 plan with no scaling: kept to reproduce the failure.
    F16,
}

impl TrainPolicy {
    /// The `--precision` name.
    pub fn name(self) -> &'static str {
        match self {
            TrainPolicy::F32 => "f32",
            TrainPolicy::Bf16 => "bf16",
            TrainPolicy::F16Scaled => "f16-scaled",
            TrainPolicy::F16 => "f16",
        }
    }

    /// Every policy, safest last.
    pub const ALL: [TrainPolicy; 4] = [
        TrainPolicy::F16,
        TrainPolicy::F16Scaled,
        TrainPolicy::Bf16,
        TrainPolicy::F32,
    ];

    /// Whether backward runs on a scaled loss.
    pub fn scaled(self) -> bool {
        self == TrainPolicy::F16Scaled
    }

    /// The next safer policy (`--on-nonfinite fallback`): f16 → f16-scaled → f32, bf16 → f32.
    pub fn safer(self) -> Option<TrainPolicy> {
        match self {
            TrainPolicy::F16 => Some(TrainPolicy::F16Scaled),
            TrainPolicy::F16Scaled | TrainPolicy::Bf16 => Some(TrainPolicy::F32),
            TrainPolicy::F32 => None,
        }
    }

    /// The graph's plan: the inference policy's dtypes, with weights held in `weights` (f32
    /// master weights when they are trained; the compute dtype when they are frozen).
    pub fn plan(self, trained_base: bool) -> PrecisionPlan {
        let plan = self.inference_policy().plan();
        PrecisionPlan {
            weights: if trained_base {
                FloatDType::F32
            } else {
                plan.weights
            },
            ..plan
        }
    }
}

impl fmt::Display for TrainPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TrainPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(TrainPolicy::F32),
            "bf16" => Ok(TrainPolicy::Bf16),
            "f16-scaled" => Ok(TrainPolicy::F16Scaled),
            "f16" => Ok(TrainPolicy::F16),
            _ => Err(format!(
                "unknown training precision '{s}' (expected f32, bf16, f16-scaled or f16)"
            )),
        }
    }
}

impl TrainPolicy {
    /// The inference policy whose dtypes the forward and backward passes use.
    pub fn inference_policy(self) -> Policy {
        match self {
            TrainPolicy::F32 => Policy::F32,
            TrainPolicy::Bf16 => Policy::Bf16,
            TrainPolicy::F16Scaled => Policy::F16Safe,
            TrainPolicy::F16 => Policy::F16,
        }
    }
}

/// One row of a backend's training column.
#[derive(Debug, Clone, Copy)]
pub struct TrainingRule {
    /// Short identifier shown by `doctor` and in logs.
    pub name: &'static str,
    /// Whether the rule applies to a device.
    pub applies: fn(&Hardware) -> bool,
    /// The policy it picks.
    pub policy: TrainPolicy,
    /// Why.
    pub reason: &'static str,
}

/// A resolved training choice and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTraining {
    /// The policy.
    pub policy: TrainPolicy,
    /// The rule that fired (`None` for a fixed choice).
    pub rule: Option<&'static str>,
    /// Why this policy.
    pub reason: String,
}

impl PolicyTable {
    /// Resolves a training choice (`None` = auto) for `hw`: the first training rule that applies
    /// and whose policy the device computes, or the fixed policy if the device computes it.
    pub fn select_training(
        &self,
        hw: &Hardware,
        choice: Option<TrainPolicy>,
    ) -> Result<ResolvedTraining> {
        let runs = |p: TrainPolicy| can_run(hw, p.inference_policy());
        match choice {
            Some(p) => {
                runs(p).map_err(|e| {
                    Error::Invalid(format!("--precision {p}: {e}; try --precision auto or f32"))
                })?;
                Ok(ResolvedTraining {
                    policy: p,
                    rule: None,
                    reason: format!("--precision {p} was requested"),
                })
            }
            None => {
                let rule = self
                    .training
                    .iter()
                    .find(|r| (r.applies)(hw) && runs(r.policy).is_ok())
                    .ok_or_else(|| {
                        Error::Invalid(format!("no {} training rule applies to {hw}", self.backend))
                    })?;
                Ok(ResolvedTraining {
                    policy: rule.policy,
                    rule: Some(rule.name),
                    reason: rule.reason.to_string(),
                })
            }
        }
    }
}
