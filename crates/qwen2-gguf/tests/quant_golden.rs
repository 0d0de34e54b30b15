//! Quantization is bit-exact with the goldens of `scripts/make_gguf_fixtures.py`: gguf-py's
//! `gguf.quants.quantize` for F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, and llama.cpp's
//! reference C functions for Q4_K and Q6_K (which gguf-py cannot quantize). The k-quant round
//! trip also stays within the error the format allows.

mod common;

use common::{index, read_f32_fixture, read_fixture};
use qwen2_gguf::{dequantize, quantize, quantize_into, GgmlType, GgufError};

#[test]
fn matches_reference_goldens_byte_for_byte() {
    let index = index();
    let types = index["quant"].as_object().expect("quant entries");
    assert!(
        types.len() >= 9,
        "F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K"
    );
    assert!(types.contains_key("Q4_K") && types.contains_key("Q6_K"));
    for name in types.keys() {
        let ggml_type = GgmlType::from_name(name).expect("known type");
        let input = read_f32_fixture(&format!("quant/{name}.input.f32"));
        let expected = read_fixture(&format!("quant/{name}.expected"));
        let actual = quantize(ggml_type, &input).expect(name);
        assert_eq!(actual.len(), expected.len(), "{name}: size");
        if let Some(i) = actual.iter().zip(&expected).position(|(a, e)| a != e) {
            let block = i / ggml_type.type_size();
            panic!(
                "{name}: first difference at byte {i} (block {block}): got {:#04x}, expected \
                 {:#04x}; block input {:?}",
                actual[i],
                expected[i],
                &input[block * ggml_type.block_size()..(block + 1) * ggml_type.block_size()]
            );
        }
    }
}

/// Deterministic pseudo-random normal-ish values (sum of uniforms), scaled per 256-block.
fn test_signal(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|i| {
            let scale = [1.0, 0.25, 30.0, 4.0][(i / 256) % 4];
            (uniform() + uniform() + uniform() + uniform()) * scale
        })
        .collect()
}

fn relative_rms_error(original: &[f32], restored: &[f32]) -> f32 {
    let (mut err, mut norm) = (0f64, 0f64);
    for (&a, &b) in original.iter().zip(restored) {
        err += f64::from(a - b).powi(2);
        norm += f64::from(a).powi(2);
    }
    (err / norm).sqrt() as f32
}

#[test]
fn k_quant_round_trip_error_is_within_format_bounds() {
    // Relative RMS error per 256-block. The block scales keep the f16 super-block scales
    // normal: tiny blocks lose precision in f16 subnormals (in llama.cpp as here).
    for (ggml_type, bound) in [
        (GgmlType::Q4_K, 0.12),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q8_0, 0.008),
        (GgmlType::Q4_0, 0.15),
    ] {
        let input = test_signal(256 * 8, 0x9E37_79B9_7F4A_7C15);
        let bytes = quantize(ggml_type, &input).unwrap();
        assert_eq!(
            bytes.len(),
            input.len() / 256 * ggml_type.type_size() * (256 / ggml_type.block_size())
        );
        let restored = dequantize(ggml_type, &bytes).unwrap();
        for (block, (x, y)) in input.chunks(256).zip(restored.chunks(256)).enumerate() {
            let error = relative_rms_error(x, y);
            assert!(
                error < bound,
                "{ggml_type} block {block}: relative RMS error {error} >= {bound}"
            );
        }
    }
}

#[test]
fn k_quants_of_zeros_and_constants() {
    for ggml_type in [GgmlType::Q4_K, GgmlType::Q6_K] {
        let zeros = vec![0f32; 512];
        let bytes = quantize(ggml_type, &zeros).unwrap();
        assert!(
            dequantize(ggml_type, &bytes)
                .unwrap()
                .iter()
                .all(|&v| v == 0.0),
            "{ggml_type}"
        );
        if ggml_type == GgmlType::Q6_K {
            assert!(
                bytes.iter().all(|&b| b == 0),
                "Q6_K of zeros is all-zero bytes"
            );
        }
        let constant = vec![0.75f32; 256];
        let restored = dequantize(ggml_type, &quantize(ggml_type, &constant).unwrap()).unwrap();
        for v in restored {
            assert!(
                (v - 0.75).abs() < 0.75 * 0.02,
                "{ggml_type}: constant 0.75 became {v}"
            );
        }
    }
}

#[test]
fn quantization_is_deterministic_and_dequantizes_to_a_fixed_point() {
    // Quantizing the dequantized values again gives values as close as the first time.
    for ggml_type in [GgmlType::Q4_K, GgmlType::Q6_K] {
        let input = test_signal(1024, 7);
        let first = quantize(ggml_type, &input).unwrap();
        assert_eq!(
            first,
            quantize(ggml_type, &input).unwrap(),
            "{ggml_type}: deterministic"
        );
        let restored = dequantize(ggml_type, &first).unwrap();
        let again = dequantize(ggml_type, &quantize(ggml_type, &restored).unwrap()).unwrap();
        let drift = relative_rms_error(&restored, &again);
        assert!(drift < 0.05, "{ggml_type}: re-quantization drift {drift}");
    }
}

#[test]
fn invalid_inputs_are_errors() {
    let err = quantize(GgmlType::Q4_K, &[0.0; 255]).expect_err("not a whole block");
    assert!(err.to_string().contains("block size 256"), "{err}");
    let err = quantize(GgmlType::Q3_K, &[0.0; 256]).expect_err("unsupported");
    assert!(
        matches!(err, GgufError::UnsupportedTensorType { .. }),
        "{err}"
    );
    let mut out = vec![0u8; 3];
    assert!(quantize_into(GgmlType::Q8_0, &[0.0; 32], &mut out).is_err());
}
