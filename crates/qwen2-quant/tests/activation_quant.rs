//! The activation quantizers are bit-exact with reference implementations written plainly
//! from llama.cpp's `quantize_row_q8_0_ref`, `quantize_row_q8_1_ref` and
//! `quantize_row_q8_K_ref`.

mod common;

use common::Rng;
use half::f16;
use qwen2_quant::{quantize_q8_0, quantize_q8_1, quantize_q8_k, QuantError};

/// (d bits, qs) of one Q8_0 block, as in C: `d = amax / ((1 << 7) - 1)`,
/// `id = d ? 1.0f/d : 0.0f`, `qs[j] = roundf(x[j] * id)`.
fn reference_q8_0(x: &[f32]) -> (u16, Vec<i8>) {
    let mut amax = 0.0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / ((1 << 7) - 1) as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let qs = x.iter().map(|&v| (v * id).round() as i8).collect();
    (f16::from_f32(d).to_bits(), qs)
}

/// (d bits, s bits, qs) of one Q8_1 block: as Q8_0, and `s = FP16(sum * d)` with
/// `sum = Σ qs` accumulated as in the C loop (first half and second half interleaved).
fn reference_q8_1(x: &[f32]) -> (u16, u16, Vec<i8>) {
    let (d_bits, qs) = reference_q8_0(x);
    let d = {
        let mut amax = 0.0f32;
        for &v in x {
            amax = amax.max(v.abs());
        }
        amax / 127.0
    };
    let mut sum = 0i32;
    for j in 0..16 {
        sum += i32::from(qs[j]);
        sum += i32::from(qs[16 + j]);
    }
    (d_bits, f16::from_f32(sum as f32 * d).to_bits(), qs)
}

/// `nearest_int` of ggml-quants.c.
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0;
    let i = val.to_bits() as i32;
    (i & 0x007fffff) - 0x00400000
}

/// (d, qs, bsums) of one Q8_K block.
fn reference_q8_k(x: &[f32]) -> (f32, Vec<i8>, Vec<i16>) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax == 0.0 {
        return (0.0, vec![0; 256], vec![0; 16]);
    }
    let iscale = -127.0f32 / max;
    let qs: Vec<i8> = x
        .iter()
        .map(|&v| nearest_int(iscale * v).min(127) as i8)
        .collect();
    let bsums = qs
        .chunks(16)
        .map(|g| g.iter().map(|&q| i32::from(q)).sum::<i32>() as i16)
        .collect();
    (1.0 / iscale, qs, bsums)
}

/// Rows that exercise the edge cases: random, all zero, a single non-zero, exact ties at
/// ±0.5 after scaling, negative maxima, tiny values.
fn test_rows(rng: &mut Rng, block: usize) -> Vec<Vec<f32>> {
    let mut rows = vec![rng.activations(block * 3), vec![0.0; block]];
    let mut single = vec![0.0; block];
    single[block / 3] = -2.5;
    rows.push(single);
    // 127 · (k + 0.5)/127 lands on .5 ties for roundf / nearest_int.
    rows.push((0..block).map(|i| (i as f32 - 8.5) / 127.0 * 1.0).collect());
    rows.push((0..block).map(|i| -((i % 7) as f32) - 0.25).collect());
    rows.push((0..block).map(|i| (i as f32) * 1e-30).collect());
    rows.push(rng.activations(block).iter().map(|v| v * 1e4).collect());
    rows
}

#[test]
fn q8_0_is_bit_exact() {
    let mut rng = Rng::new(100);
    for row in test_rows(&mut rng, 32) {
        let blocks = quantize_q8_0(&row).unwrap();
        for (block, x) in blocks.iter().zip(row.chunks(32)) {
            let (d, qs) = reference_q8_0(x);
            assert_eq!(block.d.to_bits(), d);
            assert_eq!(block.qs.to_vec(), qs);
        }
    }
}

#[test]
fn q8_1_is_bit_exact() {
    let mut rng = Rng::new(101);
    for row in test_rows(&mut rng, 32) {
        let blocks = quantize_q8_1(&row).unwrap();
        for (block, x) in blocks.iter().zip(row.chunks(32)) {
            let (d, s, qs) = reference_q8_1(x);
            assert_eq!(block.d.to_bits(), d);
            assert_eq!(block.s.to_bits(), s);
            assert_eq!(block.qs.to_vec(), qs);
        }
    }
}

#[test]
fn q8_k_is_bit_exact_with_bsums() {
    let mut rng = Rng::new(102);
    for row in test_rows(&mut rng, 256) {
        let blocks = quantize_q8_k(&row).unwrap();
        assert_eq!(blocks.len(), row.len() / 256);
        for (block, x) in blocks.iter().zip(row.chunks(256)) {
            let (d, qs, bsums) = reference_q8_k(x);
            assert_eq!(block.d.to_bits(), d.to_bits());
            assert_eq!(block.qs.to_vec(), qs);
            assert_eq!(block.bsums.to_vec(), bsums);
        }
    }
}

#[test]
fn partial_blocks_are_errors() {
    assert!(matches!(
        quantize_q8_0(&[0.0; 33]),
        Err(QuantError::Shape(_))
    ));
    assert!(matches!(
        quantize_q8_1(&[0.0; 31]),
        Err(QuantError::Shape(_))
    ));
    assert!(matches!(
        quantize_q8_k(&[0.0; 288]),
        Err(QuantError::Shape(_))
    ));
    assert!(quantize_q8_k(&[]).unwrap().is_empty());
}
