//! Writing GGUF v3 files: metadata of every value type and tensors, each aligned, written to a
//! temporary file in the destination directory and renamed into place, so that a crash never
//! leaves a partial file under the final name.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{GgufError, Result};
use crate::ggml_type::GgmlType;
use crate::metadata::{MetadataArray, MetadataValue};
use crate::parse::{align_up, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::tensor::TensorInfo;

/// The GGUF version this writer produces.
pub const WRITTEN_VERSION: u32 = 3;
/// Tensor names must be shorter than this (`GGML_MAX_NAME` in ggml, which counts the NUL).
pub const MAX_TENSOR_NAME_BYTES: usize = 63;

/// A tensor to write: its info (offset assigned at write time) and, unless supplied by the
/// provider of [`GgufWriter::write_with`], its bytes.
struct PendingTensor {
    info: TensorInfo,
    data: Option<Vec<u8>>,
}

/// Collects metadata and tensors, then writes a GGUF v3 file.
///
/// ```no_run
/// # fn main() -> qwen2_gguf::Result<()> {
/// use qwen2_gguf::{GgmlType, GgufWriter};
/// let mut writer = GgufWriter::new();
/// writer.add_metadata("general.architecture", "qwen2")?;
/// writer.add_tensor("w", GgmlType::F32, &[2, 1], 1f32.to_le_bytes().repeat(2))?;
/// writer.write("model.gguf")?;
/// # Ok(()) }
/// ```
pub struct GgufWriter {
    alignment: u64,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
    tensor_names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty writer with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
            tensor_names: HashSet::new(),
        }
    }

    /// The data alignment that will be used.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Adds a metadata entry. Keys must be non-empty and unique. `general.alignment` must be
    /// a `u32` power of two; it sets the alignment of the tensor data.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<MetadataValue>,
    ) -> Result<()> {
        let key = key.into();
        let value = value.into();
        if key.is_empty() {
            return Err(GgufError::InvalidArgument(
                "metadata keys must not be empty".into(),
            ));
        }
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(GgufError::InvalidArgument(format!(
                "duplicate metadata key `{key}`"
            )));
        }
        if key == ALIGNMENT_KEY {
            match value {
                MetadataValue::U32(a) if a.is_power_of_two() => self.alignment = u64::from(a),
                ref other => {
                    return Err(GgufError::InvalidArgument(format!(
                        "`{ALIGNMENT_KEY}` must be a u32 power of two, got {}",
                        other.describe()
                    )))
                }
            }
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Adds a tensor with its bytes (`dims` in GGUF order, `dims[0]` innermost; `data` must be
    /// exactly the encoded size).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<()> {
        let info = self.new_info(name.into(), ggml_type, dims)?;
        if data.len() as u64 != info.n_bytes() {
            return Err(GgufError::InvalidArgument(format!(
                "tensor `{}`: {} bytes given, {ggml_type} dims {dims:?} need {}",
                info.name(),
                data.len(),
                info.n_bytes()
            )));
        }
        self.push(info, Some(data));
        Ok(())
    }

    /// Adds a tensor whose bytes the provider of [`GgufWriter::write_with`] supplies at write
    /// time (so that only one tensor's bytes need be in memory at once).
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        dims: &[u64],
    ) -> Result<()> {
        let info = self.new_info(name.into(), ggml_type, dims)?;
        self.push(info, None);
        Ok(())
    }

    fn new_info(&self, name: String, ggml_type: GgmlType, dims: &[u64]) -> Result<TensorInfo> {
        if name.is_empty() || name.len() > MAX_TENSOR_NAME_BYTES {
            return Err(GgufError::InvalidArgument(format!(
                "tensor name `{name}` must have 1 to {MAX_TENSOR_NAME_BYTES} bytes"
            )));
        }
        if self.tensor_names.contains(&name) {
            return Err(GgufError::InvalidArgument(format!(
                "duplicate tensor name `{name}`"
            )));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS as usize {
            return Err(GgufError::InvalidArgument(format!(
                "tensor `{name}`: {} dims given, 1 to {MAX_DIMS} allowed",
                dims.len()
            )));
        }
        TensorInfo::new(name, ggml_type, dims.to_vec(), 0).map_err(GgufError::InvalidArgument)
    }

    fn push(&mut self, info: TensorInfo, data: Option<Vec<u8>>) {
        self.tensor_names.insert(info.name().to_string());
        self.tensors.push(PendingTensor { info, data });
    }

    /// Writes the file; every tensor must have been added with its bytes.
    pub fn write(self, path: impl AsRef<Path>) -> Result<()> {
        self.write_with(path, |info| {
            Err(GgufError::InvalidArgument(format!(
                "tensor `{}` was added without data and no provider was given",
                info.name()
            )))
        })
    }

    /// Writes the file, calling `provide` (in tensor order) for the bytes of each tensor
    /// added with [`GgufWriter::add_tensor_info`]. The file appears under `path` only once
    /// complete and synced; on error nothing is left behind.
    pub fn write_with(
        self,
        path: impl AsRef<Path>,
        mut provide: impl FnMut(&TensorInfo) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let path = path.as_ref();
        let temp = temp_path_for(path)?;
        let result = self
            .write_temp(&temp, &mut provide)
            .and_then(|()| fs::rename(&temp, path).map_err(|e| GgufError::io(path, e)));
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        } else {
            tracing::debug!(file = %path.display(), "wrote GGUF file");
        }
        result
    }

    fn write_temp(
        self,
        temp: &Path,
        provide: &mut dyn FnMut(&TensorInfo) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let io = |e| GgufError::io(temp, e);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp)
            .map_err(io)?;
        let mut out = CountingWriter {
            inner: BufWriter::new(file),
            written: 0,
        };
        let alignment = self.alignment;
        let tensors = assign_offsets(self.tensors, alignment, temp)?;

        out.put(&GGUF_MAGIC).map_err(io)?;
        out.put(&WRITTEN_VERSION.to_le_bytes()).map_err(io)?;
        out.put(&(tensors.len() as u64).to_le_bytes()).map_err(io)?;
        out.put(&(self.metadata.len() as u64).to_le_bytes())
            .map_err(io)?;
        for (key, value) in &self.metadata {
            put_string(&mut out, key).map_err(io)?;
            out.put(&value.value_type().id().to_le_bytes())
                .map_err(io)?;
            put_value(&mut out, value).map_err(io)?;
        }
        for t in &tensors {
            put_string(&mut out, t.info.name()).map_err(io)?;
            out.put(&(t.info.dims().len() as u32).to_le_bytes())
                .map_err(io)?;
            for d in t.info.dims() {
                out.put(&d.to_le_bytes()).map_err(io)?;
            }
            out.put(&t.info.ggml_type().id().to_le_bytes())
                .map_err(io)?;
            out.put(&t.info.offset().to_le_bytes()).map_err(io)?;
        }
        out.pad_to(alignment).map_err(io)?;
        for t in tensors {
            let data = match t.data {
                Some(data) => data,
                None => provide(&t.info)?,
            };
            if data.len() as u64 != t.info.n_bytes() {
                return Err(GgufError::InvalidArgument(format!(
                    "tensor `{}`: provider gave {} bytes, {} expected",
                    t.info.name(),
                    data.len(),
                    t.info.n_bytes()
                )));
            }
            out.put(&data).map_err(io)?;
            out.pad_to(alignment).map_err(io)?;
        }
        let file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    }
}

/// Gives each tensor its data offset: tensors in order, each padded to `alignment`.
fn assign_offsets(
    mut tensors: Vec<PendingTensor>,
    alignment: u64,
    path: &Path,
) -> Result<Vec<PendingTensor>> {
    let mut offset = 0u64;
    for t in &mut tensors {
        t.info.set_offset(offset);
        offset = offset
            .checked_add(t.info.n_bytes())
            .and_then(|end| align_up(end, alignment))
            .ok_or_else(|| {
                GgufError::InvalidArgument(format!(
                    "{}: tensor data size overflows",
                    path.display()
                ))
            })?;
    }
    Ok(tensors)
}

/// A fresh name in `path`'s directory: `.NAME.partial-PID-N`.
fn temp_path_for(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        GgufError::InvalidArgument(format!("{} does not name a file", path.display()))
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp_name = format!(
        ".{}.partial-{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(path.with_file_name(temp_name))
}

/// A buffered writer that counts bytes, for padding.
struct CountingWriter {
    inner: BufWriter<File>,
    written: u64,
}

impl CountingWriter {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, alignment: u64) -> std::io::Result<()> {
        let padding = (alignment - self.written % alignment) % alignment;
        self.put(&vec![0u8; padding as usize])
    }
}

fn put_string(out: &mut CountingWriter, s: &str) -> std::io::Result<()> {
    out.put(&(s.len() as u64).to_le_bytes())?;
    out.put(s.as_bytes())
}

fn put_value(out: &mut CountingWriter, value: &MetadataValue) -> std::io::Result<()> {
    use MetadataValue as V;
    match value {
        V::U8(x) => out.put(&[*x]),
        V::I8(x) => out.put(&x.to_le_bytes()),
        V::U16(x) => out.put(&x.to_le_bytes()),
        V::I16(x) => out.put(&x.to_le_bytes()),
        V::U32(x) => out.put(&x.to_le_bytes()),
        V::I32(x) => out.put(&x.to_le_bytes()),
        V::F32(x) => out.put(&x.to_le_bytes()),
        V::Bool(x) => out.put(&[u8::from(*x)]),
        V::String(s) => put_string(out, s),
        V::Array(a) => put_array(out, a),
        V::U64(x) => out.put(&x.to_le_bytes()),
        V::I64(x) => out.put(&x.to_le_bytes()),
        V::F64(x) => out.put(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut CountingWriter, array: &MetadataArray) -> std::io::Result<()> {
    use MetadataArray as A;
    out.put(&array.element_type().id().to_le_bytes())?;
    out.put(&(array.len() as u64).to_le_bytes())?;
    fn each<T: Copy, const N: usize>(
        out: &mut CountingWriter,
        values: &[T],
        encode: fn(T) -> [u8; N],
    ) -> std::io::Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|&v| encode(v)).collect();
        out.put(&bytes)
    }
    match array {
        A::U8(v) => out.put(v),
        A::I8(v) => each(out, v, i8::to_le_bytes),
        A::U16(v) => each(out, v, u16::to_le_bytes),
        A::I16(v) => each(out, v, i16::to_le_bytes),
        A::U32(v) => each(out, v, u32::to_le_bytes),
        A::I32(v) => each(out, v, i32::to_le_bytes),
        A::F32(v) => each(out, v, f32::to_le_bytes),
        A::Bool(v) => each(out, v, |b| [u8::from(b)]),
        A::U64(v) => each(out, v, u64::to_le_bytes),
        A::I64(v) => each(out, v, i64::to_le_bytes),
        A::F64(v) => each(out, v, f64::to_le_bytes),
        A::String(v) => v.iter().try_for_each(|s| put_string(out, s)),
        A::Array(v) => v.iter().try_for_each(|inner| put_array(out, inner)),
    }
}
