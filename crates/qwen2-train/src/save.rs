//! Writing safetensors files and HF model directories. Every file is written to a temporary
//! name beside its destination and renamed, so a crash never leaves half a file.

use std::path::{Path, PathBuf};

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;
use qwen2_core::model::{Qwen2Model, WeightKind, WeightMut};
use safetensors::{Dtype, View};

use crate::error::{Result, TrainError};

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// `dir/.name.tmp-<pid>` beside `path`.
pub fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Entry {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Collects tensors, then writes one safetensors file.
#[derive(Default)]
pub struct SafetensorsWriter {
    entries: Vec<Entry>,
}

impl SafetensorsWriter {
    /// Adds `tensor` (any rank, any float dtype, any backend) stored as `dtype`.
    pub fn add<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        tensor: &Tensor<B, D>,
        dtype: FloatDType,
    ) {
        let shape = tensor.dims().to_vec();
        let values = tensor
            .clone()
            .cast(FloatDType::F32)
            .into_data()
            .to_vec::<f32>()
            .expect("cast to f32 above");
        let (dtype, bytes): (Dtype, Vec<u8>) = match dtype {
            FloatDType::BF16 => (
                Dtype::BF16,
                values
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            FloatDType::F16 => (
                Dtype::F16,
                values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            _ => (
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        };
        self.entries.push(Entry {
            name: name.to_string(),
            dtype,
            shape,
            bytes,
        });
    }

    /// Adds `tensor` as f32.
    pub fn add_f32<B: Backend, const D: usize>(&mut self, name: &str, tensor: &Tensor<B, D>) {
        self.add(name, tensor, FloatDType::F32);
    }

    /// Writes the file atomically, with optional `__metadata__`.
    pub fn write(
        &self,
        path: &Path,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> Result<()> {
        let views = self.entries.iter().map(|e| (e.name.clone(), e));
        let bytes = safetensors::serialize(views, metadata)
            .map_err(|e| TrainError::io(path, std::io::Error::other(e.to_string())))?;
        write_atomic(path, &bytes)
    }
}

/// Tokenizer and generation files copied next to a saved model.
const COPIED: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
];

/// Writes an HF model directory: `config.json` (the base's, with its dtype field set to
/// `dtype`), `model.safetensors` with every base weight in `dtype`, and the base's tokenizer
/// and generation files.
pub fn save_model_dir<B: Backend>(
    model: &mut Qwen2Model<B>,
    base_dir: &Path,
    out: &Path,
    dtype: FloatDType,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let mut w = SafetensorsWriter::default();
    model.visit_weights(&mut |name, kind, t| {
        if kind != WeightKind::Base {
            return;
        }
        match t {
            WeightMut::Vector(t) => w.add(name, t, dtype),
            WeightMut::Matrix(t) => w.add(name, t, dtype),
        }
    });
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    w.write(&out.join("model.safetensors"), Some(meta))?;

    let cfg_path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| TrainError::io(&cfg_path, e))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::io(&cfg_path, std::io::Error::other(e.to_string())))?;
    let name = match dtype {
        FloatDType::BF16 => "bfloat16",
        FloatDType::F16 => "float16",
        _ => "float32",
    };
    if let Some(obj) = cfg.as_object_mut() {
        let keys: Vec<&str> = ["dtype", "torch_dtype"]
            .into_iter()
            .filter(|k| obj.contains_key(*k))
            .collect();
        for k in if keys.is_empty() {
            vec!["torch_dtype"]
        } else {
            keys
        } {
            obj.insert(k.to_string(), name.into());
        }
    }
    let text = serde_json::to_string_pretty(&cfg).expect("config serializes");
    write_atomic(&out.join("config.json"), text.as_bytes())?;
    for file in COPIED {
        let src = base_dir.join(file);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| TrainError::io(&src, e))?;
            write_atomic(&out.join(file), &bytes)?;
        }
    }
    Ok(())
}
