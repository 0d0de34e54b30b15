//! Fine-tuning tests in one binary (one link instead of three): PyTorch parity
//! (`train/parity.rs`), run behaviour and bad input (`train/behaviour.rs`), f16 training with
//! loss scaling, the anomaly monitor and fallback (`train/f16.rs`), the CPU's training ops
//! against the generic graph (`train/kernels.rs`).

mod common;

#[path = "train/behaviour.rs"]
mod behaviour;
#[path = "train/f16.rs"]
mod f16;
#[path = "train/kernels.rs"]
mod kernels;
#[path = "train/parity.rs"]
mod parity;
#[path = "train/qlora.rs"]
mod qlora;
