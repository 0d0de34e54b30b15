//! The CPU backend of qwen2-burn: burn-flex (f32, f16 and bf16; SIMD; multi-threaded with rayon).

mod attention;
mod cache;
mod fused;
mod gemm;
mod gemm_bf16;
mod gemv;
mod host;
mod matmul;
mod norm;
pub mod train;

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
    "CPU: f32 training is exact against PyTorch, and bf16 is not faster here: on the CPU's \
     training kernels (AVX512-BF16 tiles for the projections, f32 master weights, norms, softmax \
     and logits) the 0.5B benchmark ran LoRA 58 vs 62 tokens/s in f32 and full 18 vs 23 \
     (AMD EPYC, 2 threads; cargo xtask bench-train)";

/// The CPU rules. A bf16 checkpoint runs in bf16, the dtype it was trained and saved in (and
/// the one HF transformers loads it as): the CPU kernels widen bf16 weights in registers with
/// f32 accumulation, so decoding reads half the bytes. Measured with `qwen2 bench` on the 0.5B
/// benchmark model (bf16), 2 threads, AVX-512 + AVX512-BF16 host: decode 27.9 vs 14.5 tok/s in
/// f32, prefill 176 vs 211 tok/s, peak memory 1.02 vs 2.01 GB. The decode kernels are the
/// same AVX2 + FMA code on AVX2-only CPUs (nothing in them uses AVX-512), so the decode gain,
/// which comes from reading half the bytes, holds there too; bf16 prefill takes `gemm_bf16`'s
/// AVX512-BF16 kernel where the CPU has it (the prefill numbers above predate it). Other
/// checkpoints (f32, f16) run in f32, exact against the reference.
pub static CPU_POLICY_TABLE: PolicyTable = PolicyTable {
    backend: "cpu",
    rules: &[
        Rule {
            name: "cpu-quantized",
            applies: |hw, model| hw.kind == DeviceKind::Cpu && model.quantized_weights,
            policy: Policy::F32,
            reason: "CPU with projection weights kept quantized (a GGUF model, or --quantize): the \
                     integer kernels quantize each f32 activation block to 8 bits as llama.cpp \
                     does, and the rest of the graph runs in f32, exact against the reference on \
                     the dequantized weights",
        },
        Rule {
            name: "cpu-bf16-checkpoint",
            applies: |hw, model| hw.kind == DeviceKind::Cpu && model.is_bf16_checkpoint(),
            policy: Policy::Bf16,
            reason: "CPU with a bf16 checkpoint: bf16 is the dtype the model was trained and saved in; \
                     measured on the 0.5B benchmark it decodes 1.9x faster than f32 (26-28 vs 14-15 \
                     tok/s; the same AVX2+FMA kernels on AVX2-only and AVX-512 CPUs), prefills at 1.3x \
                     with AVX512-BF16 (268-279 vs 203-211 tok/s; 0.83x on the AVX2 path) and needs \
                     half the memory (1.02 vs 2.01 GB); --precision f32 is exact against an f32 \
                     reference",
        },
        Rule {
            name: "cpu-f32",
            applies: |hw, _| hw.kind == DeviceKind::Cpu,
            policy: Policy::F32,
            reason: "CPU with weights stored in f32 or f16: f32 is exact \
                     against the reference and loses nothing the checkpoint holds",
        },
    ],
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
        Some(matmul::kernel())
    }

    fn multiplies_quantized() -> bool {
        true
    }

    fn training_kernels(
    ) -> qwen2_core::train_kernels::TrainingKernels<burn::backend::Autodiff<Flex>> {
        train::kernels()
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
    fn auto_follows_a_bf16_checkpoint_and_is_f32_otherwise() {
        let facts = |dtype: Option<&str>| qwen2_core::precision::ModelFacts {
            checkpoint_dtype: dtype.map(String::from),
            quantized_weights: false,
        };
        for hw in [cpu(&["avx2"]), cpu(&["avx2", "avx512f", "avx512bf16"])] {
            let r = CPU_POLICY_TABLE
                .select_for(&hw, &facts(Some("bfloat16")), Choice::Auto)
                .unwrap();
            assert_eq!(
                (r.policy, r.rule),
                (Policy::Bf16, Some("cpu-bf16-checkpoint"))
            );
            assert_eq!(r.fallbacks, vec![Policy::F32]);
            for dtype in [Some("float32"), Some("float16"), None] {
                let r = CPU_POLICY_TABLE
                    .select_for(&hw, &facts(dtype), Choice::Auto)
                    .unwrap();
                assert_eq!(
                    (r.policy, r.rule),
                    (Policy::F32, Some("cpu-f32")),
                    "{dtype:?}"
                );
                assert!(r.fallbacks.is_empty());
                assert!(r.auto);
            }
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
