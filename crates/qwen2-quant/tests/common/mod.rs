//! Helpers shared by the integration tests: a deterministic RNG, random matrices and
//! activations, the kernel paths this CPU has, and the tolerances.

#![allow(dead_code, clippy::needless_range_loop)]

use qwen2_quant::{available_paths, GgmlType, KernelPath, QuantMatrix, QuantizedActivations};

/// SplitMix64: deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Activation-like values: mostly in [-1, 1], some outliers up to ±8.
    pub fn activations(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = self.unit();
                if self.next_u64().is_multiple_of(37) {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Every weight type with a kernel.
pub const TYPES: [GgmlType; 10] = qwen2_quant::SUPPORTED_WEIGHT_TYPES;

/// The SIMD paths this CPU has; prints the ones it lacks.
pub fn simd_paths() -> Vec<KernelPath> {
    for path in KernelPath::ALL {
        if let Some(missing) = path.missing_features() {
            eprintln!("skipped {path}: {missing}");
        }
    }
    available_paths()
        .into_iter()
        .filter(|&p| p != KernelPath::Portable)
        .collect()
}

/// Offsets of the f16 scale fields (d, and dmin/m where the type has one).
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | Q3_K | Q6_K => match ty {
            Q3_K => &[108],
            Q6_K => &[208],
            _ => &[0],
        },
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        _ => unreachable!("no kernel for {ty}"),
    }
}

/// A matrix of random blocks: every bit random except the f16 scales (in ±[0.001, 0.02]).
/// Works for every type, including those qwen2-gguf cannot quantize (Q2_K, Q3_K, Q5_K).
pub fn random_block_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QuantMatrix {
    let blocks = rows * cols / ty.block_size();
    let mut data = rng.bytes(blocks * ty.type_size());
    for block in data.chunks_exact_mut(ty.type_size()) {
        for &offset in scale_offsets(ty) {
            let magnitude = 0.001 + 0.019 * (rng.unit() * 0.5 + 0.5);
            let value = if rng.next_u64().is_multiple_of(2) {
                magnitude
            } else {
                -magnitude
            };
            let bits = half::f16::from_f32(value).to_le_bytes();
            block[offset..offset + 2].copy_from_slice(&bits);
        }
    }
    QuantMatrix::new(ty, rows, cols, data).expect("valid random matrix")
}

/// Random weights quantized with qwen2-gguf where it can, random blocks otherwise.
pub fn test_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QuantMatrix {
    if ty.can_quantize() {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.unit() * 0.1).collect();
        QuantMatrix::from_f32(ty, rows, cols, &values).expect("quantizable")
    } else {
        random_block_matrix(ty, rows, cols, rng)
    }
}

/// Column counts to test for a type: 1 block, 2 blocks, several, and a Qwen2-like width.
pub fn test_widths(ty: GgmlType) -> Vec<usize> {
    if ty.block_size() == 32 {
        vec![32, 64, 7 * 32, 896]
    } else {
        vec![256, 512, 5 * 256, 4864]
    }
}

/// The dequantized weight row `r` of a matrix.
pub fn dequantized_row(matrix: &QuantMatrix, r: usize) -> Vec<f32> {
    let bytes = &matrix.data()[r * matrix.row_bytes()..(r + 1) * matrix.row_bytes()];
    qwen2_gguf::dequantize(matrix.ggml_type(), bytes).expect("dequantizable")
}

/// `Σ |w_i| |x_i|`: the scale that f32 rounding errors of a dot product are relative to.
pub fn magnitude(w: &[f32], x: &[f32]) -> f64 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| f64::from(a.abs()) * f64::from(b.abs()))
        .sum()
}

/// `Σ w_i x_i` in f64.
pub fn exact_dot(w: &[f32], x: &[f32]) -> f64 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

/// Relative tolerance (of [`magnitude`]) between paths and against the dequantized reference:
/// the integer parts are exact, only the f32 scale products and their summation round.
pub const FLOAT_TOLERANCE: f64 = 1e-5;

/// Quantizes one activation row for a matrix.
pub fn quantize_row(matrix: &QuantMatrix, x: &[f32]) -> QuantizedActivations {
    matrix.quantize_activations(x, 1).expect("activation row")
}
