//! The CPU backend's own kernels (one-row and many-row products, fused SwiGLU, RoPE and
//! attention) against burn's generic graph on the same backend: same plan, same roundings,
//! only the f32 summation order differs.
//!
//! Tolerances on max |Δlogits|: f32 1e-4 (logits of magnitude ~50); bf16 and f16-safe two units
//! in the last place of the matmul dtype at the largest |logit|: lm_head runs in that dtype, so
//! another f32 summation order can move a logit across one rounding of it, and roundings that
//! flipped in earlier layers add about as much again (measured: up to 1.1 units).

mod common;

use common::*;
use qwen2_burn::core::{LogitsFor, Policy, Qwen2Model};

fn tolerance(policy: Policy, reference: &[f32]) -> f32 {
    let largest = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mantissa_bits = match policy {
        Policy::F32 => return 1e-4,
        Policy::Bf16 => 7,
        _ => 10,
    };
    2.0 * 2f32.powi(largest.log2().floor() as i32 - mantissa_bits)
}

#[test]
fn kernels_equal_the_generic_graph_in_prefill_and_decode() {
    let device = Default::default();
    for name in NORMAL_FIXTURES {
        let g = goldens(name);
        let ids = &g.prompt_ids;
        for policy in [Policy::F32, Policy::Bf16, Policy::F16Safe] {
            let generic = Qwen2Model::<B>::load(fixture_dir(name), policy.plan(), &device).unwrap();
            let fast = load(name, policy.plan());
            let mut cache = generic.new_cache(ids.len());
            let reference = to_f32(generic.forward(ids, &mut cache, LogitsFor::All).unwrap());
            let mut cache = fast.new_cache(ids.len());
            let ours = to_f32(fast.forward(ids, &mut cache, LogitsFor::All).unwrap());
            let tol = tolerance(policy, &reference);
            let err = max_abs_diff(&ours, &reference);
            assert!(
                err <= tol,
                "{name} {policy:?}: prefill max |Δ| {err} > {tol}"
            );

            // The last eight positions again, one decode step at a time.
            let split = ids.len() - 8;
            let mut cache = fast.new_cache(ids.len());
            fast.forward(&ids[..split], &mut cache, LogitsFor::Last)
                .unwrap();
            for (p, id) in ids.iter().enumerate().skip(split) {
                let step = to_f32(fast.forward(&[*id], &mut cache, LogitsFor::Last).unwrap());
                let row = &reference[p * g.vocab..(p + 1) * g.vocab];
                let err = max_abs_diff(&step, row);
                assert!(
                    err <= tol,
                    "{name} {policy:?}: decode at {p} max |Δ| {err} > {tol}"
                );
            }
        }
    }
}
