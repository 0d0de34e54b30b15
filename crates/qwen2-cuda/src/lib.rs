//! The CUDA backend of qwen2-burn (burn-cuda). The driver is loaded at run time, so this crate
//! builds without a CUDA toolkit and reports no device on machines without one.

use burn_cuda::{Cuda as CudaBackend, CudaDevice};
use cudarc::driver::{result, sys};
use qwen2_core::precision::{
    DeviceKind, Hardware, Policy, PolicyTable, Rule, TrainPolicy, TrainingRule,
};
use qwen2_core::Platform;

pub use burn_cuda::CudaDevice as Device;

/// The burn backend type.
pub type Backend = CudaBackend;

/// The CUDA platform.
pub struct Cuda;

/// Lowest compute capability with native bf16 arithmetic and bf16 tensor cores (Ampere).
pub const MIN_BF16_CC: (u32, u32) = (8, 0);
/// Lowest compute capability with fast f16 tensor cores (Volta).
pub const MIN_F16_TENSOR_CORE_CC: (u32, u32) = (7, 0);
/// Lowest compute capability with f16 arithmetic.
pub const MIN_F16_CC: (u32, u32) = (5, 3);

fn cc(hw: &Hardware) -> (u32, u32) {
    hw.compute_capability.unwrap_or((0, 0))
}

/// The CUDA rules, first match wins.
pub static CUDA_POLICY_TABLE: PolicyTable = PolicyTable {
    backend: "cuda",
    rules: &[
        Rule {
            name: "cuda-sm80-bf16",
            applies: |hw, _| cc(hw) >= MIN_BF16_CC,
            policy: Policy::Bf16,
            reason: "compute capability >= 8.0 (Ampere and newer: A100, RTX 30xx, H100): native bf16, \
                     the dtype Qwen2 was trained in, with f32's range",
        },
        Rule {
            name: "cuda-sm70-f16-safe",
            applies: |hw, _| cc(hw) >= MIN_F16_TENSOR_CORE_CC,
            policy: Policy::F16Safe,
            reason: "compute capability 7.x (V100, T4, RTX 20xx): f16 tensor cores but no bf16; Qwen2's \
                     massive activations overflow plain f16, so the residual stream, norms and attention \
                     scores stay f32 (falls back to f32)",
        },
        Rule {
            name: "cuda-old-f32",
            applies: |_, _| true,
            policy: Policy::F32,
            reason: "compute capability below 7.0: no tensor cores and slow or no f16, so f32",
        },
    ],
    training: &[
        TrainingRule {
            name: "cuda-sm80-train-bf16",
            applies: |hw| cc(hw) >= MIN_BF16_CC,
            policy: TrainPolicy::Bf16,
            reason: "compute capability >= 8.0: bf16 compute with f32 master weights needs no loss \
                     scaling (bf16 has f32's range)",
        },
        TrainingRule {
            name: "cuda-sm70-train-f16-scaled",
            applies: |hw| cc(hw) >= MIN_F16_TENSOR_CORE_CC,
            policy: TrainPolicy::F16Scaled,
            reason: "compute capability 7.x (V100, T4): no bf16, so f16 compute under the f16-safe plan \
                     with f32 master weights and dynamic loss scaling (plain f16 training of Qwen2 gives \
                     NaN losses)",
        },
        TrainingRule {
            name: "cuda-old-train-f32",
            applies: |_| true,
            policy: TrainPolicy::F32,
            reason: "compute capability below 7.0: no tensor cores, so f32",
        },
    ],
};

/// Whether the CUDA driver library can be loaded and initialised here.
pub fn driver_available() -> bool {
    // SAFETY: only checks whether the shared library can be opened.
    let present = unsafe { sys::is_culib_present() };
    present && result::init().is_ok()
}

fn attribute(dev: sys::CUdevice, attr: sys::CUdevice_attribute) -> Option<i32> {
    // SAFETY: `dev` comes from `result::device::get` after a successful `init`.
    unsafe { result::device::get_attribute(dev, attr) }.ok()
}

impl Platform for Cuda {
    type B = CudaBackend;
    const NAME: &'static str = "cuda";

    fn devices() -> Vec<CudaDevice> {
        if !driver_available() {
            return Vec::new();
        }
        let count = result::device::get_count().unwrap_or(0).max(0) as usize;
        (0..count).map(CudaDevice::new).collect()
    }

    fn probe(device: &CudaDevice) -> Hardware {
        let unknown = |why: String| Hardware {
            backend: "cuda",
            name: format!("CUDA device {} ({why})", device.index),
            kind: DeviceKind::Other,
            supports_f16: false,
            supports_bf16: false,
            compute_capability: None,
            features: Vec::new(),
        };
        if !driver_available() {
            return unknown("no CUDA driver".into());
        }
        let dev = match result::device::get(device.index as i32) {
            Ok(d) => d,
            Err(e) => return unknown(e.to_string()),
        };
        let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown NVIDIA GPU".into());
        let major = attribute(
            dev,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
        );
        let minor = attribute(
            dev,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
        );
        let cc = major.zip(minor).map(|(a, b)| (a as u32, b as u32));
        let cc_or_zero = cc.unwrap_or((0, 0));
        Hardware {
            backend: "cuda",
            name,
            kind: DeviceKind::DiscreteGpu,
            supports_f16: cc_or_zero >= MIN_F16_CC,
            supports_bf16: cc_or_zero >= MIN_BF16_CC,
            compute_capability: cc,
            features: Vec::new(),
        }
    }

    fn policy_table() -> &'static PolicyTable {
        &CUDA_POLICY_TABLE
    }

    fn device_memory(device: &CudaDevice) -> Option<qwen2_core::DeviceMemory> {
        use cubecl::Runtime;
        if !driver_available() {
            return None;
        }
        let usage = cubecl::cuda::CudaRuntime::client(device)
            .memory_usage()
            .ok()?;
        Some(qwen2_core::DeviceMemory {
            bytes_in_use: usage.bytes_in_use,
            bytes_reserved: usage.bytes_reserved,
        })
    }
}

/// Hardware as the probe would report it for a GPU of compute capability `cc` (for tests and docs).
pub fn hardware_for_cc(name: &str, cc: (u32, u32)) -> Hardware {
    Hardware {
        backend: "cuda",
        name: name.into(),
        kind: DeviceKind::DiscreteGpu,
        supports_f16: cc >= MIN_F16_CC,
        supports_bf16: cc >= MIN_BF16_CC,
        compute_capability: Some(cc),
        features: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwen2_core::precision::Choice;

    #[test]
    fn training_column_picks_per_compute_capability() {
        let cases = [
            ("Tesla V100", (7, 0), TrainPolicy::F16Scaled),
            ("Tesla T4", (7, 5), TrainPolicy::F16Scaled),
            ("A100", (8, 0), TrainPolicy::Bf16),
            ("H100", (9, 0), TrainPolicy::Bf16),
            ("GTX 1080", (6, 1), TrainPolicy::F32),
        ];
        for (name, cc, policy) in cases {
            let hw = hardware_for_cc(name, cc);
            let r = CUDA_POLICY_TABLE.select_training(&hw, None).unwrap();
            assert_eq!(r.policy, policy, "{name}");
            assert!(r.rule.is_some() && !r.reason.is_empty());
        }
        let t4 = hardware_for_cc("Tesla T4", (7, 5));
        let refused = CUDA_POLICY_TABLE.select_training(&t4, Some(TrainPolicy::Bf16));
        assert!(refused.unwrap_err().to_string().contains("bf16"));
    }

    #[test]
    fn table_picks_per_compute_capability() {
        let cases = [
            ("Tesla V100", (7, 0), Policy::F16Safe, vec![Policy::F32]),
            ("Tesla T4", (7, 5), Policy::F16Safe, vec![Policy::F32]),
            ("A100", (8, 0), Policy::Bf16, vec![Policy::F32]),
            ("H100", (9, 0), Policy::Bf16, vec![Policy::F32]),
            ("GTX 1080", (6, 1), Policy::F32, vec![]),
            ("K80", (3, 7), Policy::F32, vec![]),
        ];
        for (name, cc, policy, fallbacks) in cases {
            let r = CUDA_POLICY_TABLE
                .select(&hardware_for_cc(name, cc), Choice::Auto)
                .unwrap();
            assert_eq!(r.policy, policy, "{name}");
            assert_eq!(r.fallbacks, fallbacks, "{name}");
            assert!(!r.reason.is_empty());
        }
    }

    #[test]
    fn bf16_on_a_t4_is_refused() {
        let e = CUDA_POLICY_TABLE
            .select(
                &hardware_for_cc("Tesla T4", (7, 5)),
                Choice::Fixed(Policy::Bf16),
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("Tesla T4") && e.to_string().contains("bf16"),
            "{e}"
        );
    }

    #[test]
    fn no_driver_means_no_device_and_no_panic() {
        // On machines without an NVIDIA driver (CI) this must be empty, not a panic.
        let devices = Cuda::devices();
        if !driver_available() {
            assert!(devices.is_empty());
        }
    }
}
