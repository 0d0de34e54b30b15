//! HF safetensors checkpoints: one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; each tensor is converted exactly
//! (F32, BF16 or F16 on disk) straight into the dtype the precision plan stores it in.
//! A [`Checkpoint`] can also hold a GGUF model (see [`crate::gguf`]): the same HF names, each
//! tensor dequantized at load.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{FloatDType, TensorData};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gguf::GgufTensors;

mod convert;
mod rows;

pub(crate) use convert::tensor_data_from_f32;
use convert::{convert, count_nonfinite, layout, widen, SourceDtype};
pub use rows::RowReader;

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    tensors: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl Shard {
    /// Tells the OS that the mapped bytes `offset..offset + len` are no longer needed, so the
    /// file's pages do not stay resident next to the converted copy (peak memory at load is then
    /// about the weights once, not twice). The mapping is read-only and file-backed: a later
    /// read of the range would load it from the file again, so nothing is lost.
    fn release(&self, offset: usize, len: usize) {
        qwen2_gguf::release_mapped_pages(&self.map, offset, len);
    }
}

/// An opened checkpoint: every shard mapped, every header parsed and validated; or a GGUF
/// model whose tensors go by their HF names.
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    index: HashMap<String, usize>,
    description: String,
    /// The GGUF model, when the checkpoint is one (then `shards` is empty).
    gguf: Option<GgufTensors>,
    /// Where `--quantize` puts the blocks it makes (see [`Checkpoint::quantize_arena`]).
    quantize_arena: std::sync::OnceLock<Option<qwen2_quant::WeightArena>>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens the checkpoint of a model path: the safetensors of a Hugging Face directory, or
    /// a GGUF model (a `.gguf` file, a shard of a split set, or a directory holding one GGUF
    /// model and no `config.json`; see [`crate::source::ModelSource`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if let Some(file) = crate::source::gguf_model_path(dir)? {
            return Ok(Self::from_gguf(qwen2_gguf::GgufModel::open(file)?));
        }
        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let index: ShardIndex = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: index_path.clone(),
                source,
            })?;
            let mut files: Vec<&String> = index.weight_map.values().collect();
            files.sort();
            files.dedup();
            let mut shards = Vec::with_capacity(files.len());
            for (i, file) in files.iter().enumerate() {
                tracing::info!(shard = i + 1, of = files.len(), file = %file, "mapping shard");
                shards.push(Shard::open(dir.join(file))?);
            }
            let mut name_to_shard = HashMap::new();
            for (name, file) in &index.weight_map {
                let i = files
                    .iter()
                    .position(|f| *f == file)
                    .expect("file listed above");
                if !shards[i].tensors.contains_key(name) {
                    return Err(Error::MissingTensor {
                        name: name.clone(),
                        location: format!(
                            "{} (listed there by {})",
                            shards[i].path.display(),
                            index_path.display()
                        ),
                    });
                }
                name_to_shard.insert(name.clone(), i);
            }
            Ok(Checkpoint {
                shards,
                index: name_to_shard,
                description: format!("{} ({} shards)", index_path.display(), files.len()),
                gguf: None,
                quantize_arena: Default::default(),
            })
        } else if single_path.is_file() {
            let shard = Shard::open(single_path.clone())?;
            let index = shard.tensors.keys().map(|k| (k.clone(), 0)).collect();
            Ok(Checkpoint {
                shards: vec![shard],
                index,
                description: single_path.display().to_string(),
                gguf: None,
                quantize_arena: Default::default(),
            })
        } else {
            Err(Error::io(
                &single_path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no {SINGLE_FILE} or {INDEX_FILE} in {}", dir.display()),
                ),
            ))
        }
    }

    /// Opens one safetensors file (an adapter, a training checkpoint).
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let shard = Shard::open(path.clone())?;
        let index = shard.tensors.keys().map(|k| (k.clone(), 0)).collect();
        Ok(Checkpoint {
            shards: vec![shard],
            index,
            description: path.display().to_string(),
            gguf: None,
            quantize_arena: Default::default(),
        })
    }

    /// A checkpoint over an opened GGUF model: its tensors by their HF names (see
    /// [`crate::gguf::hf_name`]), each dequantized when loaded.
    pub fn from_gguf(model: qwen2_gguf::GgufModel) -> Self {
        let gguf = GgufTensors::new(model);
        Checkpoint {
            shards: Vec::new(),
            index: HashMap::new(),
            description: gguf.path().display().to_string(),
            gguf: Some(gguf),
            quantize_arena: Default::default(),
        }
    }

    /// Where the checkpoint was read from (a directory, file or list of shards), for messages.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The GGUF model, when this checkpoint is one.
    pub fn gguf(&self) -> Option<&qwen2_gguf::GgufModel> {
        self.gguf.as_ref().map(GgufTensors::model)
    }

    /// The shape of tensor `name`, if the checkpoint holds it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        if let Some(g) = &self.gguf {
            return g.shape(name);
        }
        let &i = self.index.get(name)?;
        Some(&self.shards[i].tensors[name].shape)
    }

    /// The dtype most of the checkpoint's values are stored in, by HF's name (`"bfloat16"`,
    /// `"float32"`, `"float16"`, ...): what the model was saved as, whatever config.json says.
    /// For a GGUF model, quantized types by their lowercase ggml names (`"q8_0"`, `"q4_k"`).
    pub fn stored_dtype(&self) -> Option<&'static str> {
        if let Some(g) = &self.gguf {
            return g.stored_dtype();
        }
        let mut elements: HashMap<&'static str, usize> = HashMap::new();
        for shard in &self.shards {
            for info in shard.tensors.values() {
                let name = match info.dtype {
                    Dtype::F32 => "float32",
                    Dtype::BF16 => "bfloat16",
                    Dtype::F16 => "float16",
                    Dtype::F64 => "float64",
                    _ => "other",
                };
                *elements.entry(name).or_default() += info.shape.iter().product::<usize>();
            }
        }
        elements
            .into_iter()
            .max_by_key(|&(name, n)| (n, name))
            .map(|(name, _)| name)
    }

    /// Whether the checkpoint holds a tensor of that name.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name) || self.gguf.as_ref().is_some_and(|g| g.contains(name))
    }

    /// Names of all tensors in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index
            .keys()
            .map(String::as_str)
            .chain(self.gguf.iter().flat_map(GgufTensors::names))
    }

    /// Tensor `name`'s quantized blocks, when the checkpoint is a GGUF model that stores it in a
    /// type the quantized kernels multiply directly (see [`GgufTensors::quantized`]); `None`
    /// for safetensors checkpoints and float tensors.
    pub fn quantized(
        &self,
        name: &str,
        expected: &[usize],
    ) -> Result<Option<(qwen2_gguf::GgmlType, qwen2_quant::WeightBytes)>> {
        match &self.gguf {
            Some(g) => g.quantized(name, expected),
            None => Ok(None),
        }
    }

    /// One huge-page region for every matrix `--quantize` makes from this checkpoint, so small
    /// matrices get huge pages too (a region per matrix only holds whole 2 MiB pages): room
    /// for every 2-D tensor at Q8_0's 8.5 bits per weight (the most any target or fallback
    /// type takes), reserved, not used until written. `None` without huge pages.
    pub fn quantize_arena(&self) -> Option<&qwen2_quant::WeightArena> {
        self.quantize_arena
            .get_or_init(|| {
                if !qwen2_quant::huge_pages_wanted() {
                    return None;
                }
                let sizes = self.names().filter_map(|name| match self.shape(name)? {
                    [rows, cols] => Some(rows * cols.div_ceil(32) * 34),
                    _ => None,
                });
                qwen2_quant::WeightArena::for_sizes(sizes)
                    .map_err(|e| tracing::warn!(%e, "quantized weights in per-matrix memory"))
                    .ok()
            })
            .as_ref()
    }

    /// Reads tensor `name`, checks its shape against `expected` (HF layout), converts it to
    /// `dtype`, and transposes a 2-D tensor when `transpose` is set (HF `[out, in]` → `[in, out]`).
    pub fn load(
        &self,
        name: &str,
        expected: &[usize],
        dtype: FloatDType,
        transpose: bool,
    ) -> Result<TensorData> {
        if let Some(g) = &self.gguf {
            return g.load(name, expected, dtype, transpose);
        }
        let (shard, start, bytes, source) = self.locate(name, expected)?;
        let (rows, cols, shape) = layout(expected, transpose);
        let data = match dtype {
            FloatDType::F32 => TensorData::new(widen(bytes, source, rows, cols, transpose), shape),
            FloatDType::BF16 => {
                let v = convert(
                    bytes,
                    source,
                    rows,
                    cols,
                    transpose,
                    bf16::from_f32,
                    bf16::from_bits,
                    |b| bf16::from_f32(f16::from_bits(b).to_f32()),
                );
                TensorData::new(v, shape)
            }
            FloatDType::F16 => {
                let v = convert(
                    bytes,
                    source,
                    rows,
                    cols,
                    transpose,
                    f16::from_f32,
                    |b| f16::from_f32(bf16::from_bits(b).to_f32()),
                    f16::from_bits,
                );
                TensorData::new(v, shape)
            }
            other => {
                return Err(Error::Invalid(format!(
                    "cannot store weights as {other:?}: use f32, bf16 or f16"
                )))
            }
        };
        shard.release(start, bytes.len());
        Ok(data)
    }

    /// A safetensors tensor's shard, absolute byte offset, bytes and dtype, after checking its
    /// shape against `expected`, its dtype and that it holds no NaN or inf.
    fn locate(
        &self,
        name: &str,
        expected: &[usize],
    ) -> Result<(&Shard, usize, &[u8], SourceDtype)> {
        let shard = self
            .index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| Error::MissingTensor {
                name: name.into(),
                location: self.description.clone(),
            })?;
        let info = &shard.tensors[name];
        if info.shape != expected {
            return Err(Error::TensorShape {
                name: name.into(),
                path: shard.path.clone(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (start, end) = info.data_offsets;
        let bytes = &shard.map[shard.data_start + start..shard.data_start + end];
        let source = match info.dtype {
            Dtype::F32 => SourceDtype::F32,
            Dtype::BF16 => SourceDtype::Bf16,
            Dtype::F16 => SourceDtype::F16,
            other => {
                return Err(Error::TensorDtype {
                    name: name.into(),
                    path: shard.path.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let broken = count_nonfinite(bytes, source);
        if broken > 0 {
            return Err(Error::BrokenTensor {
                name: name.into(),
                path: shard.path.clone(),
                count: broken,
                of: expected.iter().product(),
            });
        }
        Ok((shard, shard.data_start + start, bytes, source))
    }
}

impl Shard {
    fn open(path: PathBuf) -> Result<Self> {
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only and private to this process; a checkpoint that another
        // process truncates while we run is outside what we can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| Error::Safetensors {
                path: path.clone(),
                message: match e {
                    safetensors::SafeTensorError::MetadataIncompleteBuffer => format!(
                        "the data section does not match the header (file truncated or padded?): {e}"
                    ),
                    other => other.to_string(),
                },
            })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        Ok(Shard {
            path,
            map,
            data_start: 8 + header_len,
            tensors,
        })
    }
}
