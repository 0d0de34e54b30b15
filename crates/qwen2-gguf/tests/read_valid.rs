//! Reading files written by gguf-py's `GGUFWriter`: metadata of every type, tensors of several
//! types (dequantized bit-exact with gguf-py), and a split set.

mod common;

use common::{assert_bits_eq, bits_from_json, fixture_dir, index};
use qwen2_gguf::{
    GgmlType, GgufError, GgufFile, GgufModel, Metadata, MetadataArray, MetadataValue,
    MetadataValueType,
};

fn open_valid() -> GgufFile {
    GgufFile::open(fixture_dir().join("valid.gguf")).expect("valid.gguf opens")
}

#[test]
fn header_and_metadata_values() {
    let file = open_valid();
    let meta = file.metadata();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    let keys: Vec<&str> = meta.iter().map(|(k, _)| k).collect();
    let expected_keys: Vec<String> = index()["valid"]["metadata_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, expected_keys);

    assert_eq!(meta.get_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(meta.get("test.u8"), Some(&MetadataValue::U8(200)));
    assert_eq!(meta.get("test.i8"), Some(&MetadataValue::I8(-100)));
    assert_eq!(meta.get("test.u16"), Some(&MetadataValue::U16(60000)));
    assert_eq!(meta.get("test.i16"), Some(&MetadataValue::I16(-30000)));
    assert_eq!(
        meta.get("test.u32"),
        Some(&MetadataValue::U32(4_000_000_000))
    );
    assert_eq!(
        meta.get("test.i32"),
        Some(&MetadataValue::I32(-2_000_000_000))
    );
    assert_eq!(meta.get("test.f32"), Some(&MetadataValue::F32(0.1)));
    assert_eq!(meta.get("test.bool"), Some(&MetadataValue::Bool(true)));
    assert_eq!(meta.get_str("test.string").unwrap(), "héllo, GGUF");
    assert_eq!(meta.get_u64("test.u64").unwrap(), (1 << 63) + 5);
    assert_eq!(meta.get_i64("test.i64").unwrap(), -(1 << 62));
    assert_eq!(meta.get_f64("test.f64").unwrap(), 0.1);
    assert_eq!(meta.get_f32("test.f64").unwrap(), 0.1f32);
    assert_eq!(
        meta.get_i64_array("test.array_i32").unwrap(),
        vec![1, -2, 3]
    );
    assert_eq!(
        meta.get_f32_array("test.array_f32").unwrap(),
        &[0.5, -1.25, 3.0]
    );
    assert_eq!(
        meta.get_string_array("test.array_str").unwrap(),
        &["a", "", "ünïcode", "<|im_end|>"]
    );
    assert_eq!(
        meta.get_array("test.array_bool").unwrap(),
        &MetadataArray::Bool(vec![true, false])
    );
    let nested = meta.get_array("test.array_nested").unwrap();
    assert_eq!(nested.element_type(), MetadataValueType::Array);
    assert_eq!(
        nested,
        &MetadataArray::Array(vec![
            MetadataArray::I32(vec![1, 2]),
            MetadataArray::I32(vec![3]),
            MetadataArray::String(vec!["x".into(), "y".into()]),
        ])
    );
}

#[test]
fn integer_getters_accept_any_width_that_fits() {
    let file = open_valid();
    let meta = file.metadata();
    // u32 and i32 counts are both read as u32/usize.
    assert_eq!(meta.get_u32("qwen2.context_length").unwrap(), 32768);
    assert_eq!(meta.get_u32("qwen2.block_count").unwrap(), 24);
    assert_eq!(meta.get_usize("qwen2.block_count").unwrap(), 24);
    assert_eq!(meta.get_u64("test.u8").unwrap(), 200);
    assert_eq!(meta.get_i32("test.u16").unwrap(), 60000);
    assert_eq!(
        meta.optional("test.u8", Metadata::get_u32).unwrap(),
        Some(200)
    );
    assert_eq!(
        meta.optional("no.such.key", Metadata::get_u32).unwrap(),
        None
    );
}

#[test]
fn getter_errors_name_the_key_and_the_type_found() {
    let file = open_valid();
    let meta = file.metadata();
    let err = meta.get_u32("test.i8").unwrap_err();
    assert!(matches!(err, GgufError::WrongValueType { .. }));
    let text = err.to_string();
    assert!(
        text.contains("test.i8") && text.contains("i8 -100") && text.contains("valid.gguf"),
        "{text}"
    );
    let text = meta.get_u32("test.string").unwrap_err().to_string();
    assert!(text.contains("string \"héllo, GGUF\""), "{text}");
    let text = meta
        .get_string_array("test.array_i32")
        .unwrap_err()
        .to_string();
    assert!(text.contains("an array of 3 i32"), "{text}");
    let text = meta.get_f32("test.u32").unwrap_err().to_string();
    assert!(text.contains("u32 4000000000"), "{text}");
    assert!(meta.get_i32("test.u32").is_err(), "4e9 does not fit i32");
    let err = meta.get_str("missing.key").unwrap_err();
    assert!(matches!(err, GgufError::MissingKey { ref key, .. } if key == "missing.key"));
}

#[test]
fn tensors_match_gguf_py() {
    let file = open_valid();
    let expected = index()["valid"]["tensors"].as_array().unwrap().clone();
    assert_eq!(file.tensor_infos().len(), expected.len());
    for (info, want) in file.tensor_infos().iter().zip(&expected) {
        let name = want["name"].as_str().unwrap();
        assert_eq!(info.name(), name);
        assert_eq!(info.ggml_type().name(), want["type"].as_str().unwrap());
        let dims: Vec<u64> = want["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.dims(), dims.as_slice(), "{name}");
        assert_eq!(info.offset(), want["offset"].as_u64().unwrap(), "{name}");
        let view = file.tensor(name).unwrap();
        assert_eq!(view.data().len() as u64, info.n_bytes());
        if info.ggml_type() == GgmlType::I32 {
            let values: Vec<i64> = view
                .data()
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            let want: Vec<i64> = want["i32"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(values, want);
            let err = view.dequantize().unwrap_err().to_string();
            assert!(err.contains("positions") && err.contains("I32"), "{err}");
        } else {
            assert_bits_eq(
                name,
                &view.dequantize().unwrap(),
                &bits_from_json(&want["f32_bits"]),
            );
        }
    }
    // ggml order vs row-major: a [3, 5] numpy array is stored with dims [5, 3].
    let embd = file.tensor_info("token_embd.weight").unwrap();
    assert_eq!(embd.dims(), &[5, 3]);
    assert_eq!(embd.shape(), vec![3, 5]);
    assert_eq!(
        file.tensor_info("blk.0.bf16_3d").unwrap().shape(),
        vec![2, 3, 4]
    );
    let err = file.tensor("nope").unwrap_err();
    assert!(matches!(err, GgufError::TensorNotFound { .. }), "{err}");
}

#[test]
fn split_set_opens_from_any_shard_or_the_directory() {
    let split = index()["split"].clone();
    let dir = fixture_dir().join("split");
    for source in [
        dir.join("model-00001-of-00003.gguf"),
        dir.join("model-00003-of-00003.gguf"),
        dir.clone(),
    ] {
        let model =
            GgufModel::open(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert_eq!(model.shards().len(), 3);
        assert_eq!(model.tensor_count(), 5);
        assert!(model.path().ends_with("model-00001-of-00003.gguf"));
        assert_eq!(model.metadata().get_u32("qwen2.block_count").unwrap(), 1);
        for (name, want) in split["tensors"].as_object().unwrap() {
            let view = model.tensor(name).unwrap();
            assert_bits_eq(
                name,
                &view.dequantize().unwrap(),
                &bits_from_json(&want["f32_bits"]),
            );
            let shard = model
                .shards()
                .iter()
                .find(|s| s.tensor_info(name).is_some())
                .unwrap();
            assert!(shard.path().ends_with(want["file"].as_str().unwrap()));
        }
        assert_eq!(model.tensors().count(), 5);
        assert!(model.tensor("missing").is_err());
    }
}

#[test]
fn single_file_model() {
    let model = GgufModel::open(fixture_dir().join("valid.gguf")).unwrap();
    assert_eq!(model.shards().len(), 1);
    assert_eq!(model.tensor_count(), 7);
    assert!(model.tensor("output.weight").is_ok());
}
