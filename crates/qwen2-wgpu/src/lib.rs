//! The wgpu backend of qwen2-burn (burn-wgpu on Vulkan, Metal, DX12 or WebGPU): adapter probe,
//! policy table, and a refusal of bf16, which burn 0.21's wgpu kernels cannot run.

use burn_wgpu::{Wgpu as WgpuBackend, WgpuDevice};
use qwen2_core::precision::{
    DeviceKind, Hardware, Policy, PolicyTable, Rule, TrainPolicy, TrainingRule,
};
use qwen2_core::Platform;

pub use burn_wgpu::WgpuDevice as Device;

/// The burn backend type.
pub type Backend = WgpuBackend;

/// The wgpu platform.
pub struct Wgpu;

/// The wgpu rules, first match wins.
pub static WGPU_POLICY_TABLE: PolicyTable = PolicyTable {
    backend: "wgpu",
    rules: &[
        Rule {
            name: "wgpu-software-f32",
            applies: |hw, _| hw.kind == DeviceKind::SoftwareGpu,
            policy: Policy::F32,
            reason: "software adapter (lavapipe/llvmpipe/SwiftShader): no speed to gain from f16, so the exact plan",
        },
        Rule {
            name: "wgpu-shader-f16",
            applies: |hw, _| hw.supports_f16,
            policy: Policy::F16Safe,
            reason: "hardware adapter with shader-f16 but no usable bf16 in burn's wgpu kernels: f16 weights and \
                     matmuls with the residual stream, norms and attention scores in f32 (Qwen2's massive \
                     activations overflow plain f16)",
        },
        Rule {
            name: "wgpu-f32",
            applies: |_, _| true,
            policy: Policy::F32,
            reason: "adapter without shader-f16: f32 is the only plan it computes",
        },
    ],
    training: &[
        TrainingRule {
            name: "wgpu-software-train-f32",
            applies: |hw| hw.kind == DeviceKind::SoftwareGpu,
            policy: TrainPolicy::F32,
            reason: "software adapter: no speed to gain from f16, so f32",
        },
        TrainingRule {
            name: "wgpu-shader-f16-train-f16-scaled",
            applies: |hw| hw.supports_f16,
            policy: TrainPolicy::F16Scaled,
            reason: "hardware adapter with shader-f16 and no usable bf16: f16 compute under the f16-safe \
                     plan with f32 master weights and dynamic loss scaling",
        },
        TrainingRule {
            name: "wgpu-train-f32",
            applies: |_| true,
            policy: TrainPolicy::F32,
            reason: "adapter without shader-f16: f32",
        },
    ],
};

/// One wgpu adapter as seen by the probe, and the burn device that selects it.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The burn device that runs on this adapter.
    pub device: WgpuDevice,
    /// What wgpu reports.
    pub info: wgpu::AdapterInfo,
    /// Whether the adapter offers `shader-f16`.
    pub shader_f16: bool,
}

/// Every adapter of burn's graphics API here, best first (discrete, integrated, virtual,
/// software), mapped to the burn device that selects it (the i-th adapter of its type).
pub fn adapters() -> Vec<Adapter> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let all = pollster::block_on(instance.enumerate_adapters(graphics_api()));
    let mut counts = [0usize; 3];
    let mut out: Vec<Adapter> = Vec::new();
    for a in all {
        let info = a.get_info();
        let device = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => WgpuDevice::DiscreteGpu(counts[0]),
            wgpu::DeviceType::IntegratedGpu => WgpuDevice::IntegratedGpu(counts[1]),
            wgpu::DeviceType::VirtualGpu => WgpuDevice::VirtualGpu(counts[2]),
            // burn selects the first CPU adapter only
            wgpu::DeviceType::Cpu if out.iter().all(|o| o.device != WgpuDevice::Cpu) => {
                WgpuDevice::Cpu
            }
            _ => continue,
        };
        match info.device_type {
            wgpu::DeviceType::DiscreteGpu => counts[0] += 1,
            wgpu::DeviceType::IntegratedGpu => counts[1] += 1,
            wgpu::DeviceType::VirtualGpu => counts[2] += 1,
            _ => {}
        }
        let shader_f16 = a.features().contains(wgpu::Features::SHADER_F16);
        out.push(Adapter {
            device,
            info,
            shader_f16,
        });
    }
    out.sort_by_key(|a| match a.device {
        WgpuDevice::DiscreteGpu(_) => 0,
        WgpuDevice::IntegratedGpu(_) => 1,
        WgpuDevice::VirtualGpu(_) => 2,
        _ => 3,
    });
    out
}

/// The graphics API burn-wgpu's default device uses: Metal on macOS, Vulkan elsewhere.
pub fn graphics_api() -> wgpu::Backends {
    if cfg!(target_os = "macos") {
        wgpu::Backends::METAL
    } else {
        wgpu::Backends::VULKAN
    }
}

/// Whether an adapter is a software rasteriser.
pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "swiftshader", "software"]
            .iter()
            .any(|s| name.contains(s))
}

/// The [`Hardware`] of an adapter.
pub fn hardware_of(a: &Adapter) -> Hardware {
    let kind = if is_software(&a.info) {
        DeviceKind::SoftwareGpu
    } else {
        match a.info.device_type {
            wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu,
            wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu,
            _ => DeviceKind::Other,
        }
    };
    let mut features = vec![format!("{:?}", a.info.backend).to_lowercase()];
    if a.shader_f16 {
        features.push("shader-f16".into());
    }
    Hardware {
        backend: "wgpu",
        name: format!(
            "{} (vendor {:#06x}, driver {})",
            a.info.name, a.info.vendor, a.info.driver
        ),
        kind,
        supports_f16: a.shader_f16,
        // burn 0.21's wgpu bf16 matmul panics in the kernel launcher ("required feature is
        // unavailable") and 0.22 returned garbage: never run bf16 here.
        supports_bf16: false,
        compute_capability: None,
        features,
    }
}

impl Platform for Wgpu {
    type B = WgpuBackend;
    const NAME: &'static str = "wgpu";

    fn devices() -> Vec<WgpuDevice> {
        adapters().into_iter().map(|a| a.device).collect()
    }

    fn probe(device: &WgpuDevice) -> Hardware {
        match adapters().iter().find(|a| &a.device == device) {
            Some(a) => hardware_of(a),
            None => Hardware {
                backend: "wgpu",
                name: format!("{device:?} (no matching adapter)"),
                kind: DeviceKind::Other,
                supports_f16: false,
                supports_bf16: false,
                compute_capability: None,
                features: Vec::new(),
            },
        }
    }

    fn policy_table() -> &'static PolicyTable {
        &WGPU_POLICY_TABLE
    }

    fn device_memory(device: &WgpuDevice) -> Option<qwen2_core::DeviceMemory> {
        use cubecl::Runtime;
        let usage = burn_wgpu::WgpuRuntime::client(device).memory_usage().ok()?;
        Some(qwen2_core::DeviceMemory {
            bytes_in_use: usage.bytes_in_use,
            bytes_reserved: usage.bytes_reserved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwen2_core::precision::Choice;

    fn hw(kind: DeviceKind, f16: bool) -> Hardware {
        Hardware {
            backend: "wgpu",
            name: "fake adapter".into(),
            kind,
            supports_f16: f16,
            supports_bf16: false,
            compute_capability: None,
            features: vec![],
        }
    }

    #[test]
    fn training_column_picks_per_adapter() {
        let pick = |h: &Hardware| WGPU_POLICY_TABLE.select_training(h, None).unwrap().policy;
        assert_eq!(
            pick(&hw(DeviceKind::DiscreteGpu, true)),
            TrainPolicy::F16Scaled
        );
        assert_eq!(
            pick(&hw(DeviceKind::IntegratedGpu, false)),
            TrainPolicy::F32
        );
        assert_eq!(pick(&hw(DeviceKind::SoftwareGpu, true)), TrainPolicy::F32);
        let refused = WGPU_POLICY_TABLE
            .select_training(&hw(DeviceKind::DiscreteGpu, true), Some(TrainPolicy::Bf16));
        assert!(refused.is_err());
    }

    #[test]
    fn table_picks_per_adapter() {
        let pick = |h: &Hardware| WGPU_POLICY_TABLE.select(h, Choice::Auto).unwrap();
        let igpu_f16 = pick(&hw(DeviceKind::IntegratedGpu, true));
        assert_eq!(
            (igpu_f16.policy, igpu_f16.rule),
            (Policy::F16Safe, Some("wgpu-shader-f16"))
        );
        assert_eq!(igpu_f16.fallbacks, vec![Policy::F32]);
        let igpu = pick(&hw(DeviceKind::IntegratedGpu, false));
        assert_eq!((igpu.policy, igpu.rule), (Policy::F32, Some("wgpu-f32")));
        let lavapipe = pick(&hw(DeviceKind::SoftwareGpu, true));
        assert_eq!(
            (lavapipe.policy, lavapipe.rule),
            (Policy::F32, Some("wgpu-software-f32"))
        );
        let discrete = pick(&hw(DeviceKind::DiscreteGpu, true));
        assert_eq!(discrete.policy, Policy::F16Safe);
    }

    #[test]
    fn bf16_is_refused_before_anything_runs() {
        let e = WGPU_POLICY_TABLE
            .select(
                &hw(DeviceKind::DiscreteGpu, true),
                Choice::Fixed(Policy::Bf16),
            )
            .unwrap_err();
        assert!(e.to_string().contains("bf16"), "{e}");
        let e = WGPU_POLICY_TABLE
            .select(
                &hw(DeviceKind::IntegratedGpu, false),
                Choice::Fixed(Policy::F16Safe),
            )
            .unwrap_err();
        assert!(e.to_string().contains("f16"), "{e}");
    }
}
