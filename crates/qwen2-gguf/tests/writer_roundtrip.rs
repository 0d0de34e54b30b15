//! The writer: re-writing gguf-py's file reproduces it byte for byte; every value type and
//! tensor reads back; writes are atomic; split sets written here open as one model.

mod common;

use common::fixture_dir;
use qwen2_gguf::{
    quantize, split_file_name, GgmlType, GgufError, GgufFile, GgufModel, GgufWriter, MetadataArray,
    MetadataValue, SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY,
};

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn rewriting_gguf_py_file_is_byte_identical() {
    let original_path = fixture_dir().join("valid.gguf");
    let original = GgufFile::open(&original_path).unwrap();
    let mut writer = GgufWriter::new();
    for (key, value) in original.metadata().iter() {
        writer.add_metadata(key, value.clone()).unwrap();
    }
    assert_eq!(writer.alignment(), 64);
    for t in original.tensors() {
        writer
            .add_tensor(t.name(), t.ggml_type(), t.dims(), t.data().to_vec())
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.gguf");
    writer.write(&path).unwrap();
    let written = std::fs::read(&path).unwrap();
    let expected = std::fs::read(&original_path).unwrap();
    assert_eq!(written.len(), expected.len());
    assert!(written == expected, "bytes differ from gguf-py's file");
}

#[test]
fn every_value_type_and_deferred_tensors_round_trip() {
    let mut writer = GgufWriter::new();
    let entries: Vec<(&str, MetadataValue)> = vec![
        ("a.u8", 7u8.into()),
        ("a.i8", (-7i8).into()),
        ("a.u16", 700u16.into()),
        ("a.i16", (-700i16).into()),
        ("a.u32", 70_000u32.into()),
        ("a.i32", (-70_000i32).into()),
        ("a.f32", 1.5f32.into()),
        ("a.bool", false.into()),
        ("a.str", "text".into()),
        ("a.u64", u64::MAX.into()),
        ("a.i64", i64::MIN.into()),
        ("a.f64", std::f64::consts::PI.into()),
        ("a.strings", vec!["x", "yy", ""].into()),
        ("a.f32s", vec![1.0f32, f32::NEG_INFINITY].into()),
        ("a.u8s", vec![1u8, 2, 3].into()),
        ("a.bools", vec![true, false, true].into()),
        ("a.empty", MetadataValue::Array(MetadataArray::U64(vec![]))),
        (
            "a.nested",
            vec![
                MetadataArray::from(vec![1i64, 2]),
                MetadataArray::Array(vec![MetadataArray::from(vec!["deep".to_string()])]),
            ]
            .into(),
        ),
    ];
    for (key, value) in &entries {
        writer.add_metadata(*key, value.clone()).unwrap();
    }
    let w1: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 3.0).collect();
    let w2: Vec<f32> = (0..512)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    writer
        .add_tensor("w1", GgmlType::F32, &[16, 4], f32_bytes(&w1))
        .unwrap();
    writer
        .add_tensor_info("w2", GgmlType::Q4_K, &[256, 2])
        .unwrap();
    writer
        .add_tensor_info("w3", GgmlType::Q6_K, &[256, 2])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.gguf");
    let mut calls = Vec::new();
    writer
        .write_with(&path, |info| {
            calls.push(info.name().to_string());
            quantize(info.ggml_type(), &w2)
        })
        .unwrap();
    assert_eq!(calls, ["w2", "w3"]);
    // To check the file with gguf-py: QWEN2_GGUF_KEEP_WRITTEN=/tmp/x.gguf cargo test ..., then
    // python3 scripts/make_gguf_fixtures.py --check-rust-file /tmp/x.gguf
    if let Some(keep) = std::env::var_os("QWEN2_GGUF_KEEP_WRITTEN") {
        std::fs::copy(&path, keep).unwrap();
    }

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    let meta = file.metadata();
    assert_eq!(meta.len(), entries.len());
    for ((key, value), (read_key, read_value)) in entries.iter().zip(meta.iter()) {
        assert_eq!(*key, read_key);
        assert_eq!(value, read_value, "{key}");
    }
    assert_eq!(file.tensor("w1").unwrap().dequantize().unwrap(), w1);
    assert_eq!(file.tensor("w1").unwrap().shape(), vec![4, 16]);
    for (name, ggml_type) in [("w2", GgmlType::Q4_K), ("w3", GgmlType::Q6_K)] {
        let view = file.tensor(name).unwrap();
        assert_eq!(view.ggml_type(), ggml_type);
        assert_eq!(view.data(), quantize(ggml_type, &w2).unwrap().as_slice());
        assert_eq!(view.info().offset() % 32, 0);
    }
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let mut writer = GgufWriter::new();
    writer.add_tensor_info("t", GgmlType::F32, &[4]).unwrap();
    let err = writer
        .write_with(&path, |_| {
            Err(GgufError::InvalidArgument("provider failed".into()))
        })
        .unwrap_err();
    assert!(err.to_string().contains("provider failed"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file, no temp file"
    );

    let mut writer = GgufWriter::new();
    writer.add_tensor_info("t", GgmlType::F32, &[4]).unwrap();
    assert!(
        writer.write_with(&path, |_| Ok(vec![0u8; 3])).is_err(),
        "wrong size"
    );
    assert!(GgufWriter::new().write(&path).is_ok());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn writer_rejects_invalid_input() {
    let mut writer = GgufWriter::new();
    writer.add_metadata("k", 1u32).unwrap();
    assert!(writer.add_metadata("k", 2u32).is_err(), "duplicate key");
    assert!(writer.add_metadata("general.alignment", 48u32).is_err());
    assert!(
        writer.add_metadata("general.alignment", 64u64).is_err(),
        "must be u32"
    );
    writer
        .add_tensor("t", GgmlType::F32, &[2], vec![0; 8])
        .unwrap();
    assert!(
        writer
            .add_tensor("t", GgmlType::F32, &[2], vec![0; 8])
            .is_err(),
        "duplicate"
    );
    assert!(
        writer
            .add_tensor("u", GgmlType::F32, &[2], vec![0; 7])
            .is_err(),
        "size"
    );
    assert!(
        writer
            .add_tensor("v", GgmlType::Q4_K, &[128], vec![])
            .is_err(),
        "ne0 % 256"
    );
    assert!(
        writer
            .add_tensor_info("w", GgmlType::F32, &[1, 1, 1, 1, 1])
            .is_err(),
        "5 dims"
    );
    assert!(
        writer
            .add_tensor_info("x".repeat(64), GgmlType::F32, &[1])
            .is_err(),
        "name"
    );
}

/// Writes a split set of `count` shards in `dir`, one F32 tensor per shard.
fn write_split_set(dir: &std::path::Path, prefix: &str, count: usize, tensors_count: i32) {
    for i in 0..count {
        let mut writer = GgufWriter::new();
        if i == 0 {
            writer.add_metadata("general.name", "split model").unwrap();
        }
        writer.add_metadata(SPLIT_NO_KEY, i as u16).unwrap();
        writer.add_metadata(SPLIT_COUNT_KEY, count as u16).unwrap();
        writer
            .add_metadata(SPLIT_TENSORS_COUNT_KEY, tensors_count)
            .unwrap();
        writer
            .add_tensor(format!("t{i}"), GgmlType::F32, &[1], f32_bytes(&[i as f32]))
            .unwrap();
        writer
            .write(dir.join(split_file_name(prefix, i, count)))
            .unwrap();
    }
}

#[test]
fn split_sets_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_split_set(dir.path(), "m", 2, 2);
    let model = GgufModel::open(dir.path()).unwrap();
    assert_eq!(
        model.metadata().get_str("general.name").unwrap(),
        "split model"
    );
    assert_eq!(model.tensor("t1").unwrap().dequantize().unwrap(), vec![1.0]);

    // A second model in the directory makes it ambiguous.
    std::fs::copy(
        fixture_dir().join("valid.gguf"),
        dir.path().join("other.gguf"),
    )
    .unwrap();
    let err = GgufModel::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("several models") && err.contains("other.gguf"),
        "{err}"
    );

    // A missing shard.
    let dir = tempfile::tempdir().unwrap();
    write_split_set(dir.path(), "m", 3, 3);
    std::fs::remove_file(dir.path().join("m-00002-of-00003.gguf")).unwrap();
    let err = GgufModel::open(dir.path().join("m-00001-of-00003.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing: m-00002-of-00003.gguf"), "{err}");

    // Wrong split.tensors.count.
    let dir = tempfile::tempdir().unwrap();
    write_split_set(dir.path(), "m", 2, 5);
    let err = GgufModel::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("split.tensors.count") && err.contains("hold 2"),
        "{err}"
    );

    // A renamed shard claims a count its name does not have.
    let dir = tempfile::tempdir().unwrap();
    write_split_set(dir.path(), "m", 2, 2);
    std::fs::rename(
        dir.path().join("m-00001-of-00002.gguf"),
        dir.path().join("single.gguf"),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("m-00002-of-00002.gguf")).unwrap();
    let err = GgufModel::open(dir.path().join("single.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("split.count") && err.contains("1 shard file"),
        "{err}"
    );

    // Empty directory.
    let dir = tempfile::tempdir().unwrap();
    let err = GgufModel::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no .gguf file"), "{err}");
    assert!(GgufModel::open(dir.path().join("absent.gguf")).is_err());
}
