//! What a backend's probe reports about a device; the input of a [`super::PolicyTable`].

use std::fmt;

/// Broad class of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A CPU.
    Cpu,
    /// A discrete GPU.
    DiscreteGpu,
    /// A GPU sharing memory with the CPU.
    IntegratedGpu,
    /// A GPU emulated in software (lavapipe, llvmpipe, SwiftShader).
    SoftwareGpu,
    /// Anything else.
    Other,
}

/// A probed device.
#[derive(Debug, Clone, PartialEq)]
pub struct Hardware {
    /// Backend name (`cpu`, `wgpu`, `cuda`).
    pub backend: &'static str,
    /// Human-readable device name.
    pub name: String,
    /// Device class.
    pub kind: DeviceKind,
    /// Whether f16 tensors compute correctly on this device.
    pub supports_f16: bool,
    /// Whether bf16 tensors compute correctly on this device.
    pub supports_bf16: bool,
    /// CUDA compute capability `(major, minor)`, for NVIDIA devices.
    pub compute_capability: Option<(u32, u32)>,
    /// Relevant instruction-set or device features (e.g. `avx512bf16`, `shader-f16`).
    pub features: Vec<String>,
}

impl Hardware {
    /// Whether `feature` was reported.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

impl fmt::Display for Hardware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, {:?}", self.name, self.backend, self.kind)?;
        if let Some((major, minor)) = self.compute_capability {
            write!(f, ", sm{major}{minor}")?;
        }
        write!(
            f,
            ", f16 {}, bf16 {}",
            if self.supports_f16 { "yes" } else { "no" },
            if self.supports_bf16 { "yes" } else { "no" }
        )?;
        if !self.features.is_empty() {
            write!(f, ", {}", self.features.join(" "))?;
        }
        f.write_str("]")
    }
}
