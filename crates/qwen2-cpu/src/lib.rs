//! The CPU backend of qwen2-burn: burn-flex (f32, f16 and bf16; SIMD; multi-threaded with rayon).

mod attention;
mod fused;
mod gemm;
mod gemv;
mod host;

use burn_flex::{Flex, FlexDevice};
use qwen2_core::precision::{
    DeviceKind, Hardware, Policy, PolicyTable, Rule, TrainPolicy, TrainingRule,
};
use qwen2_core::Platform;

pub use burn_flex::{Flex as Backend, FlexDevice as Device};

/// The CPU platform.
pub struct Cpu;

/// Why `qwen2 finetune --precision auto` trains in f32 on the CPU (see `cargo xtask bench-train`).
pub const CPU_TRAIN_REASON: &str =
    "CPU: f32 training is exact against PyTorch, and bf16 compute is about 2x slower (burn's CPU \
     backend converts bf16 operands on every autodiff op; measured on the 0.5B benchmark: LoRA \
     41 vs 21 tokens/s, full 13 vs 8; cargo xtask bench-train)";

/// The CPU rules. The CPU kernels run f32 and bf16 weights at about the same prefill speed
/// (bf16 is widened in registers, f32 accumulation), and bf16 decodes ~1.5x faster from half
/// the memory; f32 stays the default because it is exact against the reference while bf16
/// moves logits by up to ~0.6 on the test fixtures. `--precision bf16` is the fast choice.
pub static CPU_POLICY_TABLE: PolicyTable = PolicyTable {
    backend: "cpu",
    rules: &[Rule {
        name: "cpu-f32",
        applies: |hw| hw.kind == DeviceKind::Cpu,
        policy: Policy::F32,
        reason: "CPU: f32 is exact against the reference; bf16 prefills about as fast, decodes \
                 ~1.5x faster and needs half the memory (0.5B benchmark in the README), at the cost \
                 of bf16 rounding (logits move by up to ~0.6): pick it with --precision bf16",
    }],
    training: &[TrainingRule {
        name: "cpu-train-f32",
        applies: |hw| hw.kind == DeviceKind::Cpu,
        policy: TrainPolicy::F32,
        reason: CPU_TRAIN_REASON,
    }],
};

impl Platform for Cpu {
    type B = Flex;
    const NAME: &'static str = "cpu";

    fn matmul_kernel() -> Option<std::sync::Arc<dyn qwen2_core::model::MatmulKernel<Flex>>> {
        Some(gemv::kernel())
    }

    fn fused_kernels() -> Option<std::sync::Arc<dyn qwen2_core::model::FusedKernels<Flex>>> {
        Some(fused::kernels())
    }

    fn devices() -> Vec<FlexDevice> {
        vec![FlexDevice]
    }

    fn probe(_device: &FlexDevice) -> Hardware {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Hardware {
            backend: Self::NAME,
            name: format!("{} CPU, {threads} threads", std::env::consts::ARCH),
            kind: DeviceKind::Cpu,
            supports_f16: true,
            supports_bf16: true,
            compute_capability: None,
            features: cpu_features(),
        }
    }

    fn policy_table() -> &'static PolicyTable {
        &CPU_POLICY_TABLE
    }
}

/// Instruction-set features relevant to matmul speed in low precision.
pub fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut out: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            out.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            out.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            out.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            out.push("avx512bf16");
        }
        if std::arch::is_x86_feature_detected!("avx512fp16") {
            out.push("avx512fp16");
        }
        if std::arch::is_x86_feature_detected!("f16c") {
            out.push("f16c");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("fp16") {
            out.push("fp16");
        }
        if std::arch::is_aarch64_feature_detected!("bf16") {
            out.push("bf16");
        }
    }
    out.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwen2_core::precision::Choice;

    fn cpu(features: &[&str]) -> Hardware {
        Hardware {
            backend: "cpu",
            name: "test CPU".into(),
            kind: DeviceKind::Cpu,
            supports_f16: true,
            supports_bf16: true,
            compute_capability: None,
            features: features.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn auto_is_f32_with_and_without_avx512_bf16() {
        for hw in [cpu(&["avx2"]), cpu(&["avx2", "avx512f", "avx512bf16"])] {
            let r = CPU_POLICY_TABLE.select(&hw, Choice::Auto).unwrap();
            assert_eq!(r.policy, Policy::F32);
            assert_eq!(r.rule, Some("cpu-f32"));
            assert!(r.fallbacks.is_empty());
            assert!(r.auto);
        }
    }

    #[test]
    fn fixed_policies_run_and_fall_back_towards_f32() {
        let hw = cpu(&[]);
        let r = CPU_POLICY_TABLE
            .select(&hw, Choice::Fixed(Policy::F16))
            .unwrap();
        assert_eq!(r.fallbacks, vec![Policy::F16Safe, Policy::F32]);
        assert!(!r.auto && r.rule.is_none());
        let r = CPU_POLICY_TABLE
            .select(&hw, Choice::Fixed(Policy::Bf16))
            .unwrap();
        assert_eq!(r.fallbacks, vec![Policy::F32]);
    }

    #[test]
    fn probe_reports_a_cpu_that_runs_every_policy() {
        let hw = Cpu::probe(&FlexDevice);
        assert_eq!(hw.kind, DeviceKind::Cpu);
        for p in Policy::ALL {
            assert!(qwen2_core::precision::can_run(&hw, *p).is_ok(), "{p}");
        }
    }
}
