//! Helpers shared by the integration tests: fixture paths and little-endian f32 files.

#![allow(dead_code)]

use std::path::PathBuf;

/// `tests/fixtures/gguf` at the workspace root (made by `scripts/make_gguf_fixtures.py`).
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

/// The fixture index (`index.json`).
pub fn index() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json is JSON")
}

/// A fixture file's bytes.
pub fn read_fixture(relative: &str) -> Vec<u8> {
    let path = fixture_dir().join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture file of little-endian f32 values.
pub fn read_f32_fixture(relative: &str) -> Vec<f32> {
    read_fixture(relative)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A JSON array of numbers as `u32` f32 bit patterns.
pub fn bits_from_json(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_u64().expect("u32 bits") as u32)
        .collect()
}

/// Asserts two f32 slices are equal bit for bit, naming the first difference.
pub fn assert_bits_eq(what: &str, actual: &[f32], expected_bits: &[u32]) {
    assert_eq!(actual.len(), expected_bits.len(), "{what}: length");
    for (i, (a, &e)) in actual.iter().zip(expected_bits).enumerate() {
        assert_eq!(
            a.to_bits(),
            e,
            "{what}: element {i}: got {a:e} ({:#010x}), expected {:e} ({e:#010x})",
            a.to_bits(),
            f32::from_bits(e)
        );
    }
}
