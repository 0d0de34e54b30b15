//! Run-time choice of the kernel implementation from probed CPU features.

use std::fmt;
use std::sync::OnceLock;

/// Environment variable that forces [`best_path`]: `portable`, `avx2` or `avx512vnni`.
pub const PATH_ENV_VAR: &str = "QWEN2_QUANT_PATH";

/// One implementation of the quantized dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelPath {
    /// Scalar Rust with llama.cpp's reference (`_generic`) semantics; runs everywhere.
    Portable,
    /// x86-64 AVX2 + FMA + F16C: `maddubs_epi16` / `madd_epi16` integer dots.
    Avx2,
    /// The AVX2 kernels with the integer dots done by AVX-512 VNNI (`vpdpbusd` / `vpdpwssd`
    /// on 256-bit registers) and byte masks from AVX-512BW; Q4_0/Q5_0 on 512-bit registers
    /// with AVX-512 VBMI byte permutes where the CPU has VBMI (needs avx512vnni + avx512vl +
    /// avx512bw).
    Avx512Vnni,
}

impl KernelPath {
    /// Every path, slowest first.
    pub const ALL: [KernelPath; 3] = [
        KernelPath::Portable,
        KernelPath::Avx2,
        KernelPath::Avx512Vnni,
    ];

    /// The name used by [`PATH_ENV_VAR`] and in logs.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Portable => "portable",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512vnni",
        }
    }

    /// The path named `name` (case-insensitive), if any.
    pub fn from_name(name: &str) -> Option<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU has the features the path needs (probed once, then cached).
    pub fn is_available(self) -> bool {
        let features = cpu_features();
        match self {
            KernelPath::Portable => true,
            KernelPath::Avx2 => features.avx2,
            KernelPath::Avx512Vnni => features.avx2 && features.avx512_vnni,
        }
    }

    /// Why the path is unavailable (the missing CPU features), or `None` when it is available.
    pub fn missing_features(self) -> Option<&'static str> {
        if self.is_available() {
            return None;
        }
        Some(match self {
            KernelPath::Portable => unreachable!("portable is always available"),
            KernelPath::Avx2 => "CPU lacks avx2+fma+f16c",
            KernelPath::Avx512Vnni => "CPU lacks avx512vnni+avx512vl+avx512bw (with avx2+fma+f16c)",
        })
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy)]
struct CpuFeatures {
    /// avx2 + fma + f16c.
    avx2: bool,
    /// avx512vnni + avx512vl + avx512bw (+ avx512f).
    avx512_vnni: bool,
}

fn cpu_features() -> CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    *FEATURES.get_or_init(probe_cpu_features)
}

#[cfg(target_arch = "x86_64")]
fn probe_cpu_features() -> CpuFeatures {
    CpuFeatures {
        avx2: is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"),
        avx512_vnni: is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn probe_cpu_features() -> CpuFeatures {
    CpuFeatures {
        avx2: false,
        avx512_vnni: false,
    }
}

/// Whether the CPU has AVX-512 VBMI (byte permutes), which the VNNI path's Q4_0/Q5_0/Q8_0
/// kernels use where present (probed once).
pub(crate) fn has_avx512_vbmi() -> bool {
    static VBMI: OnceLock<bool> = OnceLock::new();
    *VBMI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512vbmi")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The paths this CPU can run, slowest first (always starts with [`KernelPath::Portable`]).
pub fn available_paths() -> Vec<KernelPath> {
    KernelPath::ALL
        .into_iter()
        .filter(|p| p.is_available())
        .collect()
}

/// The fastest available path, unless [`PATH_ENV_VAR`] names another available one. An
/// unknown or unavailable forced path is reported with `tracing::warn!` and ignored. Decided
/// once per process.
pub fn best_path() -> KernelPath {
    static BEST: OnceLock<KernelPath> = OnceLock::new();
    *BEST.get_or_init(|| {
        let fastest = *available_paths().last().unwrap_or(&KernelPath::Portable);
        let chosen = match std::env::var(PATH_ENV_VAR) {
            Ok(value) => forced_path(&value).unwrap_or(fastest),
            Err(_) => fastest,
        };
        tracing::debug!(path = %chosen, "qwen2-quant kernel path");
        chosen
    })
}

/// The path `value` forces, or `None` (with a warning) when it is unknown or unavailable.
fn forced_path(value: &str) -> Option<KernelPath> {
    let Some(path) = KernelPath::from_name(value) else {
        tracing::warn!(
            "{PATH_ENV_VAR}={value:?} is not one of portable, avx2, avx512vnni; using the \
             fastest available path"
        );
        return None;
    };
    if let Some(missing) = path.missing_features() {
        tracing::warn!(
            "{PATH_ENV_VAR}={value:?} forces the {path} kernels, but the {missing}; using the \
             fastest available path"
        );
        return None;
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_portable_is_always_available() {
        for path in KernelPath::ALL {
            assert_eq!(KernelPath::from_name(path.name()), Some(path));
        }
        assert_eq!(KernelPath::from_name(" AVX2 "), Some(KernelPath::Avx2));
        assert_eq!(KernelPath::from_name("neon"), None);
        assert_eq!(available_paths()[0], KernelPath::Portable);
        assert!(available_paths().contains(&best_path()));
        assert_eq!(forced_path("nonsense"), None);
        assert_eq!(forced_path("portable"), Some(KernelPath::Portable));
    }
}
