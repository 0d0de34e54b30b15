//! Policy tables: rules keyed by hardware, each with its reason. `auto` resolves through the
//! first rule that applies; a fixed policy is checked against what the device can run.

use super::hardware::Hardware;
use super::plan::{Policy, PrecisionPlan};
use crate::error::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Let the backend's table decide.
    Auto,
    /// This policy, or an error if the device cannot run it.
    Fixed(Policy),
}

impl std::str::FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s == "auto" {
            Ok(Choice::Auto)
        } else {
            s.parse::<Policy>()
                .map(Choice::Fixed)
                .map_err(|e| e.replace(")", ", auto)"))
        }
    }
}

/// What a rule may know about the model besides the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFacts {
    /// The dtype the checkpoint's weights are stored in ("bfloat16", "float32", ...; see
    /// [`crate::weights::Checkpoint::stored_dtype`]); `None` when unknown.
    pub checkpoint_dtype: Option<String>,
    /// Whether the projection weights will be kept quantized in memory (a GGUF model's
    /// quantized tensors on a backend with quantized kernels, or `--quantize`).
    pub quantized_weights: bool,
}

impl ModelFacts {
    /// The facts of an opened checkpoint.
    pub fn from_checkpoint(ckpt: &crate::weights::Checkpoint) -> Self {
        Self {
            checkpoint_dtype: ckpt.stored_dtype().map(String::from),
            quantized_weights: false,
        }
    }

    /// Whether the checkpoint was saved in bf16 (the dtype Qwen2 was trained in).
    pub fn is_bf16_checkpoint(&self) -> bool {
        self.checkpoint_dtype.as_deref() == Some("bfloat16")
    }
}

/// One row of a policy table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Short identifier shown by `doctor` and in logs.
    pub name: &'static str,
    /// Whether the rule applies to a device and a model.
    pub applies: fn(&Hardware, &ModelFacts) -> bool,
    /// The policy it picks.
    pub policy: Policy,
    /// Why.
    pub reason: &'static str,
}

/// A backend's rules, first match wins; the last rule should apply to everything.
#[derive(Debug)]
pub struct PolicyTable {
    /// Backend name.
    pub backend: &'static str,
    /// The rules, in order.
    pub rules: &'static [Rule],
    /// The training column: rules for `qwen2 finetune --precision auto`, in order.
    pub training: &'static [super::train::TrainingRule],
}

/// A resolved choice: the plan, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The chosen policy.
    pub policy: Policy,
    /// Its plan.
    pub plan: PrecisionPlan,
    /// The rule that fired (`None` for a fixed choice).
    pub rule: Option<&'static str>,
    /// Why this policy.
    pub reason: String,
    /// Safer policies to fall back to, in order, all runnable on the device.
    pub fallbacks: Vec<Policy>,
    /// Whether the user asked for `auto` (fallback is then on by default).
    pub auto: bool,
}

/// Whether `hw` computes every dtype `policy` uses.
pub fn can_run(hw: &Hardware, policy: Policy) -> std::result::Result<(), String> {
    use burn::tensor::FloatDType::{BF16, F16};
    let dtypes = policy.plan().dtypes();
    if dtypes.contains(&BF16) && !hw.supports_bf16 {
        return Err(format!(
            "policy {policy} needs bf16, which {} cannot compute",
            hw.name
        ));
    }
    if dtypes.contains(&F16) && !hw.supports_f16 {
        return Err(format!(
            "policy {policy} needs f16, which {} cannot compute",
            hw.name
        ));
    }
    Ok(())
}

impl PolicyTable {
    /// Resolves `choice` for `hw` and a model of unknown dtype. A pure function: no device
    /// is touched.
    pub fn select(&self, hw: &Hardware, choice: Choice) -> Result<Resolved> {
        self.select_for(hw, &ModelFacts::default(), choice)
    }

    /// Resolves `choice` for `hw` and a model with `facts`. A pure function.
    pub fn select_for(
        &self,
        hw: &Hardware,
        facts: &ModelFacts,
        choice: Choice,
    ) -> Result<Resolved> {
        let (policy, rule, reason) = match choice {
            Choice::Fixed(p) => {
                can_run(hw, p).map_err(|e| Error::Invalid(format!("{e}; try --precision auto")))?;
                (p, None, format!("--precision {p} was requested"))
            }
            Choice::Auto => {
                let rule = self
                    .rules
                    .iter()
                    .find(|r| (r.applies)(hw, facts) && can_run(hw, r.policy).is_ok())
                    .ok_or_else(|| {
                        Error::Invalid(format!("no {} policy rule applies to {hw}", self.backend))
                    })?;
                (rule.policy, Some(rule.name), rule.reason.to_string())
            }
        };
        let fallbacks = std::iter::successors(policy.safer(), |p| p.safer())
            .filter(|p| can_run(hw, *p).is_ok())
            .collect();
        Ok(Resolved {
            policy,
            plan: policy.plan(),
            rule,
            reason,
            fallbacks,
            auto: choice == Choice::Auto,
        })
    }
}
