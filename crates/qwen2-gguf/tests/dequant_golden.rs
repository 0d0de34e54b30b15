//! Dequantization is bit-exact with gguf-py's `gguf.quants.dequantize` for every supported
//! type (goldens from `scripts/make_gguf_fixtures.py`).

mod common;

use common::{assert_bits_eq, index, read_f32_fixture, read_fixture};
use qwen2_gguf::{dequantize, dequantize_into, GgmlType, GgufError};

const SUPPORTED: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

#[test]
fn every_supported_type_matches_gguf_py_bit_for_bit() {
    let index = index();
    for name in SUPPORTED {
        let ggml_type = GgmlType::from_name(name).expect("known type");
        assert!(ggml_type.can_dequantize(), "{name}");
        let entry = &index["dequant"][name];
        let blocks = read_fixture(&format!("dequant/{name}.blocks"));
        let expected = read_f32_fixture(&format!("dequant/{name}.f32"));
        assert_eq!(entry["n_elements"].as_u64(), Some(expected.len() as u64));
        assert_eq!(entry["n_bytes"].as_u64(), Some(blocks.len() as u64));
        let actual = dequantize(ggml_type, &blocks).expect(name);
        let expected_bits: Vec<u32> = expected.iter().map(|v| v.to_bits()).collect();
        assert_bits_eq(name, &actual, &expected_bits);
    }
}

#[test]
fn unsupported_types_are_errors_naming_the_type() {
    for &t in GgmlType::all() {
        if t.can_dequantize() {
            continue;
        }
        let data = vec![0u8; t.type_size()];
        let err = dequantize(t, &data).expect_err(t.name());
        assert!(
            matches!(&err, GgufError::UnsupportedTensorType { type_name, .. } if type_name == t.name()),
            "{t}: {err}"
        );
        assert!(err.to_string().contains(t.name()), "{err}");
    }
}

#[test]
fn wrong_buffer_sizes_are_errors_not_panics() {
    let blocks = read_fixture("dequant/Q4_K.blocks");
    let err = dequantize(GgmlType::Q4_K, &blocks[..blocks.len() - 1]).expect_err("partial block");
    assert!(err.to_string().contains("whole number"), "{err}");
    let mut out = vec![0f32; 10];
    let err = dequantize_into(GgmlType::Q4_K, &blocks, &mut out).expect_err("short output");
    assert!(err.to_string().contains("room for 10"), "{err}");
}

#[test]
fn bf16_and_f16_outputs_round_the_f32_values() {
    let blocks = read_fixture("dequant/Q8_0.blocks");
    let f32s = dequantize(GgmlType::Q8_0, &blocks).unwrap();
    let bf16s = qwen2_gguf::dequantize_to_bf16(GgmlType::Q8_0, &blocks).unwrap();
    let f16s = qwen2_gguf::dequantize_to_f16(GgmlType::Q8_0, &blocks).unwrap();
    for ((&x, b), h) in f32s.iter().zip(&bf16s).zip(&f16s) {
        assert_eq!(b.to_bits(), half::bf16::from_f32(x).to_bits());
        assert_eq!(h.to_bits(), half::f16::from_f32(x).to_bits());
    }
}
