//! Every SIMD path this CPU has gives the portable result within f32 rounding of the scale
//! products, for every weight type, several widths and a row count that is no multiple of
//! the chunk size.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use qwen2_quant::{KernelPath, QuantMatrix};

const ROWS: usize = 13;

fn assert_paths_agree(matrix: &QuantMatrix, x: &[f32], label: &str) {
    let mut portable = vec![0f32; matrix.rows()];
    matrix
        .matvec_with_path(KernelPath::Portable, x, &mut portable)
        .unwrap();
    let act = quantize_row(matrix, x).dequantize_row(0).unwrap();
    for path in simd_paths() {
        let mut y = vec![0f32; matrix.rows()];
        matrix.matvec_with_path(path, x, &mut y).unwrap();
        for r in 0..matrix.rows() {
            let mag = magnitude(&dequantized_row(matrix, r), &act);
            let diff = f64::from((y[r] - portable[r]).abs());
            assert!(
                diff <= FLOAT_TOLERANCE * mag + 1e-30,
                "{label} {path} row {r}: {} vs portable {} (diff {diff:e}, magnitude {mag:e})",
                y[r],
                portable[r]
            );
        }
    }
}

#[test]
fn simd_paths_match_portable_on_quantized_weights() {
    let mut rng = Rng::new(1);
    for ty in TYPES {
        for cols in test_widths(ty) {
            let matrix = test_matrix(ty, ROWS, cols, &mut rng);
            let x = rng.activations(cols);
            assert_paths_agree(&matrix, &x, &format!("{ty} cols {cols}"));
        }
    }
}

#[test]
fn simd_paths_match_portable_on_random_bit_patterns() {
    let mut rng = Rng::new(2);
    for ty in TYPES {
        for cols in test_widths(ty) {
            let matrix = random_block_matrix(ty, ROWS, cols, &mut rng);
            let x = rng.activations(cols);
            assert_paths_agree(&matrix, &x, &format!("{ty} random bits cols {cols}"));
        }
    }
}

#[test]
fn extreme_activations_do_not_saturate() {
    // Activations at ±127 after quantization with weights at their extremes: exercises the
    // 16-bit pair sums of maddubs.
    let mut rng = Rng::new(3);
    for ty in TYPES {
        let cols = ty.block_size() * 2;
        let matrix = random_block_matrix(ty, 5, cols, &mut rng);
        let x: Vec<f32> = (0..cols)
            .map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_paths_agree(&matrix, &x, &format!("{ty} ±1 activations"));
    }
}

#[test]
fn zero_activations_give_zero() {
    let mut rng = Rng::new(4);
    for ty in TYPES {
        let cols = ty.block_size();
        let matrix = test_matrix(ty, 3, cols, &mut rng);
        for path in qwen2_quant::available_paths() {
            let mut y = vec![1f32; 3];
            matrix
                .matvec_with_path(path, &vec![0.0; cols], &mut y)
                .unwrap();
            // Q4_1/Q5_1 add m·s with s = 0; everything else multiplies zeros.
            assert!(y.iter().all(|&v| v == 0.0), "{ty} {path}: {y:?}");
        }
    }
}
