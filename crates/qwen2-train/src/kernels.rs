//! Where a run computes: a backend's own training kernels, and the check that a quantized
//! base has kernels that can differentiate through it.

use crate::anomaly::GradProbe;
use crate::error::{Result, TrainError};
use crate::trainer::Trainer;
use qwen2_core::train_kernels::TrainingKernels;

impl<B: GradProbe> Trainer<B> {
    /// Runs the training on a backend's own kernels (see [`TrainingKernels`];
    /// `Platform::training_kernels` gives a backend's): its products and fused ops with their
    /// backward passes, and its one-pass AdamW. The numbers stay those of the generic graph
    /// within the training tests' tolerances.
    pub fn with_kernels(mut self, kernels: TrainingKernels<B>) -> Self {
        if let Some(k) = kernels.matmul {
            self.model.set_matmul_kernel(k);
        }
        if let Some(k) = kernels.fused {
            self.model.set_fused_kernels(k.clone());
            self.fused = Some(k);
        }
        self.optimizer = kernels.optimizer;
        self.quantized_grads = kernels.quantized_base;
        self
    }

    /// Refuses to train a quantized base without kernels that differentiate through it (the
    /// generic quantized product is a host computation: no gradient would reach the layers
    /// below it).
    pub(crate) fn check_quantized_base(&self) -> Result<()> {
        if self.model.is_quantized() && !self.quantized_grads {
            return Err(TrainError::option(
                "--quantize",
                "this backend's training kernels cannot pass gradients through quantized \
                 weights (the CPU backend's can): use --backend cpu, or train on the dense model",
            ));
        }
        Ok(())
    }
}
