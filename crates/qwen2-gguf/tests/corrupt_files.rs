//! Corrupt and unsupported files are errors that name the file and what is wrong — never a
//! panic, an out-of-bounds read or a huge allocation. Variants are made by mutating the bytes
//! of the gguf-py fixture `valid.gguf`.

mod common;

use common::{fixture_dir, read_fixture};
use qwen2_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetadataArray, MetadataValue};

fn valid_bytes() -> Vec<u8> {
    read_fixture("valid.gguf")
}

/// Offset of the GGUF string `text` (u64 length prefix + bytes) in `bytes`.
fn find_string(bytes: &[u8], text: &str) -> usize {
    let mut needle = (text.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(text.as_bytes());
    bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("`{text}` not found"))
}

/// Offset just after the key string `key` (where the value type id is).
fn after_key(bytes: &[u8], key: &str) -> usize {
    find_string(bytes, key) + 8 + key.len()
}

/// Offsets of a tensor info's fields: (n_dims, first dim, type, offset).
fn tensor_fields(bytes: &[u8], name: &str) -> (usize, usize, usize, usize) {
    let n_dims_at = find_string(bytes, name) + 8 + name.len();
    let n_dims = u32::from_le_bytes(bytes[n_dims_at..n_dims_at + 4].try_into().unwrap()) as usize;
    let dims_at = n_dims_at + 4;
    let type_at = dims_at + 8 * n_dims;
    (n_dims_at, dims_at, type_at, type_at + 4)
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Parses `bytes`, expecting an error whose message contains every one of `parts`.
fn expect_error(bytes: Vec<u8>, parts: &[&str]) -> GgufError {
    let err = GgufFile::from_bytes("mutated.gguf", bytes).expect_err("corrupt file must not open");
    let text = err.to_string();
    assert!(
        text.contains("mutated.gguf"),
        "error does not name the file: {text}"
    );
    for part in parts {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }
    err
}

#[test]
fn every_truncation_is_an_error_until_the_last_tensor_ends() {
    let bytes = valid_bytes();
    let file = GgufFile::from_bytes("valid.gguf", bytes.clone()).unwrap();
    let data_end = file
        .tensor_infos()
        .iter()
        .map(|t| file.data_offset() + t.offset() + t.n_bytes())
        .max()
        .unwrap() as usize;
    for len in 0..bytes.len() {
        let result = GgufFile::from_bytes("cut.gguf", bytes[..len].to_vec());
        if len < data_end {
            let err = result.expect_err("truncated file opened");
            assert!(matches!(err, GgufError::Corrupt { .. }), "len {len}: {err}");
        } else {
            assert!(result.is_ok(), "len {len}: only padding was cut");
        }
    }
    let text = GgufFile::from_bytes("cut.gguf", bytes[..20].to_vec())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("truncated") && text.contains("offset 16"),
        "{text}"
    );
}

#[test]
fn truncated_file_on_disk_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.gguf");
    std::fs::write(&path, &valid_bytes()[..1000]).unwrap();
    let text = GgufFile::open(&path).unwrap_err().to_string();
    assert!(text.contains("short.gguf"), "{text}");
    std::fs::write(&path, b"").unwrap();
    assert!(GgufFile::open(&path)
        .unwrap_err()
        .to_string()
        .contains("magic"));
    assert!(GgufFile::open(dir.path().join("absent.gguf")).is_err());
    assert!(GgufFile::open(fixture_dir().join("valid.gguf")).is_ok());
}

#[test]
fn header_errors() {
    let mut bytes = valid_bytes();
    bytes[0..4].copy_from_slice(b"GGML");
    expect_error(bytes, &["bad magic", "47 47 4d 4c"]);

    let mut bytes = valid_bytes();
    put_u32(&mut bytes, 4, 1);
    let err = expect_error(bytes, &["version 1"]);
    assert!(matches!(err, GgufError::UnsupportedFile { .. }));

    let mut bytes = valid_bytes();
    put_u32(&mut bytes, 4, 3u32.swap_bytes());
    expect_error(bytes, &["big-endian"]);

    let mut bytes = valid_bytes();
    put_u32(&mut bytes, 4, 9);
    expect_error(bytes, &["unknown GGUF version 9"]);

    let mut bytes = valid_bytes();
    put_u32(&mut bytes, 4, 2);
    assert_eq!(
        GgufFile::from_bytes("v2.gguf", bytes).unwrap().version(),
        2,
        "v2 reads"
    );

    let mut bytes = valid_bytes();
    put_u64(&mut bytes, 16, u64::MAX);
    expect_error(bytes, &["metadata key/value count", "18446744073709551615"]);

    let mut bytes = valid_bytes();
    put_u64(&mut bytes, 8, 1 << 40);
    expect_error(bytes, &["tensor count"]);
}

#[test]
fn metadata_errors_name_the_key() {
    let mut bytes = valid_bytes();
    let at = after_key(&bytes, "test.array_str");
    put_u64(&mut bytes, at + 8, u64::MAX / 2);
    expect_error(bytes, &["test.array_str", "count 9223372036854775807"]);

    let mut bytes = valid_bytes();
    let at = after_key(&bytes, "test.string");
    put_u64(&mut bytes, at + 4, 1 << 50);
    expect_error(bytes, &["test.string", "string length 1125899906842624"]);

    let mut bytes = valid_bytes();
    let at = after_key(&bytes, "test.bool");
    bytes[at + 4] = 2;
    expect_error(bytes, &["test.bool", "expected 0 or 1"]);

    let mut bytes = valid_bytes();
    let at = after_key(&bytes, "test.u8");
    put_u32(&mut bytes, at, 99);
    expect_error(bytes, &["test.u8", "unknown value type id 99"]);

    let mut bytes = valid_bytes();
    let at = after_key(&bytes, "test.array_nested");
    put_u32(&mut bytes, at + 4, 77);
    expect_error(
        bytes,
        &["test.array_nested", "unknown array element type id 77"],
    );

    let mut bytes = valid_bytes();
    let at = find_string(&bytes, "test.u16");
    bytes[at + 8..at + 16].copy_from_slice(b"test.i16");
    expect_error(bytes, &["duplicate metadata key `test.i16`"]);

    for bad in [0u32, 48] {
        let mut bytes = valid_bytes();
        let at = after_key(&bytes, "general.alignment");
        put_u32(&mut bytes, at + 4, bad);
        expect_error(bytes, &["general.alignment", "power of two"]);
    }
}

#[test]
fn tensor_info_errors_name_the_tensor() {
    let mut bytes = valid_bytes();
    let (_, _, _, offset_at) = tensor_fields(&bytes, "output.weight");
    put_u64(&mut bytes, offset_at, 1 << 40);
    expect_error(bytes, &["output.weight", "past the end of the file"]);

    let mut bytes = valid_bytes();
    let (_, _, _, offset_at) = tensor_fields(&bytes, "output.weight");
    put_u64(&mut bytes, offset_at, u64::MAX - 63);
    expect_error(bytes, &["output.weight"]);

    let mut bytes = valid_bytes();
    let (_, _, _, offset_at) = tensor_fields(&bytes, "blk.0.ffn_up.weight");
    let offset = u64::from_le_bytes(bytes[offset_at..offset_at + 8].try_into().unwrap());
    put_u64(&mut bytes, offset_at, offset + 32);
    expect_error(
        bytes,
        &["blk.0.ffn_up.weight", "not a multiple of the alignment 64"],
    );

    let mut bytes = valid_bytes();
    let (_, _, _, offset_at) = tensor_fields(&bytes, "blk.0.attn_q.weight");
    put_u64(&mut bytes, offset_at, 64);
    expect_error(
        bytes,
        &["overlap", "blk.0.attn_q.weight", "blk.0.attn_norm.weight"],
    );

    let mut bytes = valid_bytes();
    let at = find_string(&bytes, "blk.0.bf16_3d");
    bytes[at + 8..at + 21].copy_from_slice(b"output.weight");
    expect_error(bytes, &["duplicate tensor name `output.weight`"]);

    let mut bytes = valid_bytes();
    let (n_dims_at, _, _, _) = tensor_fields(&bytes, "positions");
    put_u32(&mut bytes, n_dims_at, 5);
    expect_error(bytes, &["positions", "n_dims is 5"]);

    let mut bytes = valid_bytes();
    let (_, _, type_at, _) = tensor_fields(&bytes, "output.weight");
    put_u32(&mut bytes, type_at, 4);
    let err = expect_error(bytes, &["output.weight", "ggml type id 4"]);
    assert!(matches!(err, GgufError::UnsupportedFile { .. }));

    let mut bytes = valid_bytes();
    let (_, dims_at, _, _) = tensor_fields(&bytes, "token_embd.weight");
    put_u64(&mut bytes, dims_at, 1 << 40);
    put_u64(&mut bytes, dims_at + 8, 1 << 40);
    expect_error(bytes, &["token_embd.weight", "overflows"]);

    let mut bytes = valid_bytes();
    let (_, dims_at, _, _) = tensor_fields(&bytes, "token_embd.weight");
    put_u64(&mut bytes, dims_at, u64::MAX);
    expect_error(bytes, &["token_embd.weight", "too large"]);

    let mut bytes = valid_bytes();
    let (_, dims_at, _, _) = tensor_fields(&bytes, "blk.0.ffn_up.weight");
    put_u64(&mut bytes, dims_at, 128);
    put_u64(&mut bytes, dims_at + 8, 4);
    expect_error(
        bytes,
        &["blk.0.ffn_up.weight", "ne[0] = 128", "Q4_K block size 256"],
    );

    let mut bytes = valid_bytes();
    let (_, dims_at, _, _) = tensor_fields(&bytes, "token_embd.weight");
    put_u64(&mut bytes, dims_at, 500);
    expect_error(bytes, &["token_embd.weight", "past the end"]);
}

#[test]
fn arrays_nested_too_deep_are_rejected() {
    let mut array = MetadataArray::U8(vec![1]);
    for _ in 0..20 {
        array = MetadataArray::Array(vec![array]);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.gguf");
    let mut writer = GgufWriter::new();
    writer
        .add_metadata("deep", MetadataValue::Array(array))
        .unwrap();
    writer
        .add_tensor("t", GgmlType::F32, &[1], vec![0; 4])
        .unwrap();
    writer.write(&path).unwrap();
    let text = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        text.contains("deep") && text.contains("nested deeper"),
        "{text}"
    );
}

#[test]
fn random_byte_flips_never_panic() {
    let bytes = valid_bytes();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..3000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut mutated = bytes.clone();
        let at = (state % mutated.len() as u64) as usize;
        mutated[at] ^= (state >> 32) as u8 | 1;
        if let Ok(file) = GgufFile::from_bytes("flip.gguf", mutated) {
            for t in file.tensors() {
                let _ = t.dequantize();
            }
        }
    }
}
