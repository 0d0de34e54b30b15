//! The portable kernels equal a plain reference: the weight row dequantized by qwen2-gguf
//! times the activation row (dequantized from its Q8 blocks, and as the original f32 values).
//!
//! Tolerances:
//! - against the dequantized activation: [`FLOAT_TOLERANCE`] (1e-5) × `Σ|w||x|`;
//! - against the f32 activation, the activation-quantization error on top: per element
//!   `|x − d·q| ≤ c·d` with the block scale `d`, `c = 0.5 + 127·2⁻¹¹` (≈ 0.562) for Q8_0/Q8_1
//!   (weight types Q4_0, Q5_0, Q8_0 / Q4_1, Q5_1), whose scale is rounded to f16, and
//!   `c = 0.5 + 1e-5` for Q8_K (k-quants; f32 scale), so the bound is `Σ |w_i| · c · d_i`.
//! - Q4_1/Q5_1 add `m · s` per block with Q8_1's `s = d·Σq` rounded to f16 (as llama.cpp), so
//!   both bounds get `Σ_blocks |m| · (|s| · 2⁻¹¹ + 2⁻²⁴)` on top.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use qwen2_quant::{ActivationBlocks, GgmlType, KernelPath, QuantizedActivations};

/// Per-element bound factor `c` of the activation quantization error (see the module docs).
fn activation_error_factor(ty: GgmlType) -> f64 {
    if ty.block_size() == 32 {
        0.5 + 127.0 / 2048.0
    } else {
        0.5 + 1e-5
    }
}

/// The scale `d` of the activation block holding each element.
fn element_scales(act: &QuantizedActivations) -> Vec<f64> {
    match act.blocks() {
        ActivationBlocks::Q8_0(b) => b
            .iter()
            .flat_map(|b| [f64::from(b.d.to_f32().abs()); 32])
            .collect(),
        ActivationBlocks::Q8_1(b) => b
            .iter()
            .flat_map(|b| [f64::from(b.d.to_f32().abs()); 32])
            .collect(),
        ActivationBlocks::Q8K(b) => b.iter().flat_map(|b| [f64::from(b.d.abs()); 256]).collect(),
    }
}

/// `Σ_blocks |m| · (|s| · 2⁻¹¹ + 2⁻²⁴)`: the f16 rounding of Q8_1's `s` times the weight
/// minimum (0 for the other formats).
fn q8_1_sum_rounding(weight_row: &[u8], ty: GgmlType, act: &QuantizedActivations) -> f64 {
    let ActivationBlocks::Q8_1(blocks) = act.blocks() else {
        return 0.0;
    };
    weight_row
        .chunks_exact(ty.type_size())
        .zip(blocks)
        .map(|(w, a)| {
            let m = half::f16::from_le_bytes([w[2], w[3]]).to_f32().abs();
            f64::from(m) * (f64::from(a.s.to_f32().abs()) / 2048.0 + 1.0 / 16_777_216.0)
        })
        .sum()
}

fn check_against_reference(ty: GgmlType, random_bits: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    for cols in test_widths(ty) {
        let rows = 7;
        let matrix = if random_bits {
            random_block_matrix(ty, rows, cols, &mut rng)
        } else {
            test_matrix(ty, rows, cols, &mut rng)
        };
        let x = rng.activations(cols);
        let act = quantize_row(&matrix, &x);
        let x_hat = act.dequantize_row(0).unwrap();
        let scales = element_scales(&act);
        let mut y = vec![0f32; rows];
        matrix
            .matvec_with_path(KernelPath::Portable, &x, &mut y)
            .unwrap();
        for r in 0..rows {
            let w = dequantized_row(&matrix, r);
            let row_bytes = &matrix.data()[r * matrix.row_bytes()..(r + 1) * matrix.row_bytes()];
            let sum_rounding = q8_1_sum_rounding(row_bytes, ty, &act);
            let mag = magnitude(&w, &x_hat);
            let got = f64::from(y[r]);
            let reference = exact_dot(&w, &x_hat);
            assert!(
                (got - reference).abs() <= FLOAT_TOLERANCE * mag + sum_rounding + 1e-30,
                "{ty} cols {cols} row {r}: {got} vs dequantized reference {reference}"
            );
            let quant_bound: f64 = w
                .iter()
                .zip(&scales)
                .map(|(&wi, &d)| f64::from(wi.abs()) * activation_error_factor(ty) * d)
                .sum();
            let f32_reference = exact_dot(&w, &x);
            assert!(
                (got - f32_reference).abs() <= quant_bound + FLOAT_TOLERANCE * mag + sum_rounding,
                "{ty} cols {cols} row {r}: {got} vs f32 reference {f32_reference} \
                 (bound {quant_bound:e})"
            );
        }
    }
}

#[test]
fn portable_matches_dequantized_reference_on_quantized_weights() {
    for (i, ty) in TYPES.into_iter().enumerate() {
        check_against_reference(ty, false, 10 + i as u64);
    }
}

#[test]
fn portable_matches_dequantized_reference_on_random_bit_patterns() {
    for (i, ty) in TYPES.into_iter().enumerate() {
        check_against_reference(ty, true, 30 + i as u64);
    }
}

#[test]
fn lists_the_paths_tested() {
    let paths = simd_paths();
    eprintln!("SIMD paths tested on this CPU: {paths:?}");
}
