//! [`GgufTensors`]: the tensors of a GGUF model under their HF names, dequantized one at a time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use burn::tensor::{FloatDType, TensorData};
use qwen2_gguf::{GgmlType, GgufError, GgufModel};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// One tensor: its GGUF name and its row-major (HF) shape.
struct Entry {
    gguf_name: String,
    shape: Vec<usize>,
}

/// A GGUF model's tensors by HF name. Loading one dequantizes just that tensor to f32
/// ([`qwen2_gguf::TensorView::dequantize`]) and converts it to the plan's dtype, so memory at
/// load is one tensor's f32 copy on top of the converted weights, never the whole file.
pub struct GgufTensors {
    model: GgufModel,
    entries: HashMap<String, Entry>,
    /// Where [`GgufTensors::quantized`] copies the blocks when huge pages are available
    /// (made on the first call; `None` to read them in place from the mapping).
    arena: OnceLock<Option<qwen2_quant::WeightArena>>,
}

/// Bytes copied (by one thread) from the mapping before the pages are released: one huge
/// page.
const COPY_CHUNK: usize = 2 << 20;

impl GgufTensors {
    /// Indexes the tensors of `model` the Qwen2 graph uses (others are logged and skipped).
    pub fn new(model: GgufModel) -> Self {
        let mut entries = HashMap::new();
        for view in model.tensors() {
            match super::hf_name(view.name()) {
                Some(hf) => {
                    let entry = Entry {
                        gguf_name: view.name().to_string(),
                        shape: view.shape(),
                    };
                    entries.insert(hf, entry);
                }
                None => tracing::debug!(tensor = view.name(), "GGUF tensor not used by Qwen2"),
            }
        }
        GgufTensors {
            model,
            entries,
            arena: OnceLock::new(),
        }
    }

    /// The arena for the quantized blocks of every tensor the graph uses, when
    /// [`qwen2_quant::huge_pages_wanted`]; `None` (blocks read in place from the mapping) when
    /// not, or when the memory cannot be mapped.
    fn arena(&self) -> Option<&qwen2_quant::WeightArena> {
        self.arena
            .get_or_init(|| {
                if !qwen2_quant::huge_pages_wanted() {
                    return None;
                }
                let sizes = self.entries.values().filter_map(|e| {
                    let view = self.model.tensor(&e.gguf_name).ok()?;
                    let quantized = qwen2_quant::SUPPORTED_WEIGHT_TYPES.contains(&view.ggml_type());
                    quantized.then(|| view.data().len())
                });
                match qwen2_quant::WeightArena::for_sizes(sizes) {
                    Ok(arena) => Some(arena),
                    Err(e) => {
                        tracing::warn!(%e, "quantized weights stay in the file mapping");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The GGUF model.
    pub fn model(&self) -> &GgufModel {
        &self.model
    }

    /// The model's (first) file.
    pub fn path(&self) -> &Path {
        self.model.path()
    }

    /// The row-major shape of HF tensor `name` (`[out, in]` for a linear weight).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Whether the model has HF tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The HF names of the tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The type most of the values are stored in: `"float32"`, `"float16"`, `"bfloat16"`, or a
    /// quantized type's lowercase ggml name (`"q8_0"`, `"q4_k"`, ...).
    pub fn stored_dtype(&self) -> Option<&'static str> {
        dominant_type(&self.model).map(dtype_name)
    }

    /// The entry of HF tensor `name`, with its shape checked against `expected` (HF layout):
    /// a missing tensor or another shape is an error naming the file and both names.
    fn entry(&self, name: &str, expected: &[usize]) -> Result<&Entry> {
        let Some(entry) = self.entries.get(name) else {
            let gguf = super::gguf_name(name).unwrap_or_else(|| "?".into());
            return Err(Error::MissingTensor {
                name: name.to_string(),
                location: format!("{} (GGUF name `{gguf}`)", self.path().display()),
            });
        };
        if entry.shape != expected {
            return Err(self.tensor_error(
                name,
                entry,
                format!(
                    "has shape {:?}, expected {expected:?} (from the GGUF metadata)",
                    entry.shape
                ),
            ));
        }
        Ok(entry)
    }

    /// An error about HF tensor `name` (GGUF `entry`) of this file.
    fn tensor_error(&self, name: &str, entry: &Entry, message: String) -> Error {
        Error::GgufTensor {
            name: name.to_string(),
            gguf_name: entry.gguf_name.clone(),
            path: self.path().to_path_buf(),
            message,
        }
    }

    /// HF tensor `name`'s stored blocks when its type is one the quantized kernels multiply
    /// directly ([`qwen2_quant::SUPPORTED_WEIGHT_TYPES`]): the type and its bytes, with the
    /// shape checked against `expected` (HF layout). The bytes are copied into huge pages
    /// where the system has them (decode streams them faster; the mapped pages are released
    /// as the copy goes, so they are resident once), else shared with the memory map.
    /// `None` for float types (F32/F16/BF16).
    pub fn quantized(
        &self,
        name: &str,
        expected: &[usize],
    ) -> Result<Option<(GgmlType, qwen2_quant::WeightBytes)>> {
        let entry = self.entry(name, expected)?;
        let view = self.model.tensor(&entry.gguf_name)?;
        let ty = view.ggml_type();
        if !qwen2_quant::SUPPORTED_WEIGHT_TYPES.contains(&ty) {
            return Ok(None);
        }
        let (owner, range) = self.model.shared_tensor(&entry.gguf_name)?;
        let invalid = |e: qwen2_quant::QuantError| Error::Invalid(format!("{name}: {e}"));
        let Some(arena) = self.arena() else {
            let bytes = qwen2_quant::WeightBytes::new(owner, range).map_err(invalid)?;
            return Ok(Some((ty, bytes)));
        };
        // A copy in huge pages; the mapped pages are released as the copy goes, so the blocks
        // are not resident twice.
        let source = &(*owner).as_ref()[range];
        let bytes = arena
            .store(source.len(), |dst| {
                // In parallel: the kernel zeroes each huge page as it is first written, which
                // took as long as the copy itself.
                dst.par_chunks_mut(COPY_CHUNK)
                    .zip(source.par_chunks(COPY_CHUNK))
                    .enumerate()
                    .try_for_each(|(i, (d, s))| {
                        d.copy_from_slice(s);
                        let start = i * COPY_CHUNK;
                        self.model
                            .release_pages(&entry.gguf_name, start..start + s.len())
                            .map_err(qwen2_quant::QuantError::from)
                    })
            })
            .map_err(invalid)?;
        Ok(Some((ty, bytes)))
    }

    /// Dequantizes HF tensor `name` (checked against `expected`, HF layout) and converts it to
    /// `dtype`, transposing a 2-D tensor when `transpose` is set (as
    /// [`crate::weights::Checkpoint::load`]).
    pub fn load(
        &self,
        name: &str,
        expected: &[usize],
        dtype: FloatDType,
        transpose: bool,
    ) -> Result<TensorData> {
        let path = self.path().to_path_buf();
        let entry = self.entry(name, expected)?;
        let tensor_error = |message: String| self.tensor_error(name, entry, message);
        let view = self.model.tensor(&entry.gguf_name)?;
        let values = view.dequantize().map_err(|e| {
            tensor_error(match e {
                GgufError::UnsupportedTensorType { type_name, .. } => format!(
                    "ggml type {type_name} cannot be dequantized yet (supported: F32, F16, BF16, \
                     Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)"
                ),
                other => other.to_string(),
            })
        })?;
        let broken = values.iter().filter(|v| !v.is_finite()).count();
        if broken > 0 {
            return Err(Error::BrokenTensor {
                name: format!("{name} (GGUF `{}`)", entry.gguf_name),
                path,
                count: broken,
                of: values.len(),
            });
        }
        tracing::trace!(tensor = name, gguf = %entry.gguf_name, ty = %view.ggml_type().name(),
            "dequantized");
        crate::weights::tensor_data_from_f32(values, expected, dtype, transpose)
    }
}

/// The ggml type most of the model's values are stored in.
pub(crate) fn dominant_type(model: &GgufModel) -> Option<GgmlType> {
    let mut elements: HashMap<GgmlType, u64> = HashMap::new();
    for view in model.tensors() {
        *elements.entry(view.ggml_type()).or_default() += view.n_elements();
    }
    elements
        .into_iter()
        .max_by_key(|&(t, n)| (n, t.id()))
        .map(|(t, _)| t)
}

/// HF's dtype names for the float types, lowercase ggml names for the others.
pub(crate) fn dtype_name(t: GgmlType) -> &'static str {
    static NAMES: OnceLock<Vec<(GgmlType, String)>> = OnceLock::new();
    match t {
        GgmlType::F32 => "float32",
        GgmlType::F16 => "float16",
        GgmlType::BF16 => "bfloat16",
        other => NAMES
            .get_or_init(|| {
                GgmlType::all()
                    .iter()
                    .map(|&t| (t, t.name().to_lowercase()))
                    .collect()
            })
            .iter()
            .find(|(t, _)| *t == other)
            .map_or("other", |(_, n)| n.as_str()),
    }
}
