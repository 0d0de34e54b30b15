//! The CPU backend of qwen2-burn: burn-flex (f32, f16 and bf16; SIMD; multi-threaded with rayon).

use burn_flex::{Flex, FlexDevice};
use qwen2_core::Platform;

/// The CPU platform.
pub struct Cpu;

impl Platform for Cpu {
    type B = Flex;
    const NAME: &'static str = "cpu";

    fn devices() -> Vec<FlexDevice> {
        vec![FlexDevice]
    }

    fn describe(_device: &FlexDevice) -> String {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!(
            "CPU ({threads} threads, burn-flex, {})",
            std::env::consts::ARCH
        )
    }
}

pub use burn_flex::{Flex as Backend, FlexDevice as Device};
