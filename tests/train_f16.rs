//! f16 training with dynamic loss scaling against PyTorch: a functional Qwen2 forward with the
//! `f16-safe` casts and `torch.amp.GradScaler("cpu")` (scripts/make_f16_train_fixtures.py),
//! 20 steps of full fine-tuning with a starting scale large enough that the first steps
//! overflow and a growth interval of 3, so the scale backs off, grows and backs off again.
//!
//! Checked: the same steps skipped, the same scale at every step, the learning rate of every
//! applied step; each step's loss within 1e-3 relative of PyTorch's f16 loss (two f16
//! implementations round matmul outputs in different orders; the f16 forward itself moves the
//! loss by ~2.5e-4 relative from f32), and the gradient norm of applied steps within 2e-3
//! (measured: 2.4e-4 and 3.7e-4).

mod common;

use common::{train_dir, train_options};
use qwen2_burn::train::{Autodiff, ScalerConfig, TrainPrecision, Trainer};

type T = Autodiff<common::B>;

#[test]
fn f16_scaled_skips_the_steps_pytorch_skips_with_the_same_scales() {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(train_dir().join("f16_scaled_goldens.json")).unwrap(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut o = train_options("full", TrainPrecision::F16Scaled, out.path());
    let s = &g["scaler"];
    o.scaler = ScalerConfig {
        init_scale: s["init_scale"].as_f64().unwrap(),
        growth_factor: s["growth_factor"].as_f64().unwrap(),
        backoff_factor: s["backoff_factor"].as_f64().unwrap(),
        growth_interval: s["growth_interval"].as_u64().unwrap() as usize,
    };
    let mut t = Trainer::<T>::new(o, &Default::default()).unwrap();
    let (mut worst_loss, mut worst_norm) = (0f64, 0f64);
    let mut skipped = Vec::new();
    for (i, want) in g["f16_scaled"].as_array().unwrap().iter().enumerate() {
        let r = t.step().unwrap();
        assert_eq!(r.loss_scale, want["scale"].as_f64(), "step {i}: loss scale");
        assert_eq!(
            r.skipped,
            want["skipped"].as_bool().unwrap(),
            "step {i}: skipped"
        );
        let loss = want["loss"].as_f64().unwrap();
        let rel = (r.loss - loss).abs() / loss;
        worst_loss = worst_loss.max(rel);
        assert!(rel < 1e-3, "step {i}: loss {} vs PyTorch {loss}", r.loss);
        if r.skipped {
            skipped.push(i);
            assert!(
                !r.grad_norm.is_finite(),
                "step {i}: a skipped step has non-finite gradients"
            );
            continue;
        }
        let lr = want["lr"].as_f64().unwrap();
        assert!((r.lr - lr).abs() <= 1e-12, "step {i}: lr {} vs {lr}", r.lr);
        let norm = want["grad_norm"].as_f64().unwrap();
        let rel = (r.grad_norm - norm).abs() / norm;
        worst_norm = worst_norm.max(rel);
        assert!(
            rel < 2e-3,
            "step {i}: grad norm {} vs PyTorch {norm}",
            r.grad_norm
        );
    }
    eprintln!(
        "f16-scaled: skipped {skipped:?}; worst loss {worst_loss:.1e}, worst grad norm {worst_norm:.1e} relative to PyTorch"
    );
}
