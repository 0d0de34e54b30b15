//! One GGUF file, memory-mapped and validated on open.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{GgufError, Result};
use crate::metadata_map::Metadata;
use crate::parse::{parse_gguf, ParsedFile};
use crate::tensor::{TensorInfo, TensorView};

/// The bytes of a file: a read-only memory map, or an owned buffer.
#[derive(Debug)]
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for Storage {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// Drops this process's pages of `map` holding bytes `offset..offset + len` (whole 4 KiB pages,
/// so a neighbour's page may go too). For a read-only file mapping nothing is lost: the next
/// read loads them from the file again. Does nothing off Unix.
pub fn release_mapped_pages(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let begin = offset / PAGE * PAGE;
        let end = (offset + len).div_ceil(PAGE) * PAGE;
        let end = end.min(map.len());
        if end > begin {
            // SAFETY: a read-only private file mapping: MADV_DONTNEED drops pages that the
            // next access reads from the file again; no page was ever written.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, begin, end - begin)
            };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

/// A file's bytes shared beyond the life of its [`GgufFile`] (see [`GgufFile::shared_tensor`]).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A GGUF file (v2 or v3, little-endian): header, metadata and tensor infos parsed and
/// validated against the file on open; tensor data read in place from the memory map.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    storage: Arc<Storage>,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Opens, memory-maps and validates the file at `path`. The file must not be modified
    /// while it is open (as with any memory-mapped file).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| GgufError::io(path, e))?;
        // SAFETY: the map is read-only; like every reader of memory-mapped model files, we
        // require that the file is not truncated or rewritten while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io(path, e))?;
        Self::from_storage(path.to_path_buf(), Storage::Mapped(map))
    }

    /// Parses and validates a GGUF file held in memory; `name` stands for the path in errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(name.into(), Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<Self> {
        let ParsedFile {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        } = parse_gguf(&path, storage.bytes())?;
        let tensor_index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name().to_string(), i))
            .collect();
        tracing::debug!(
            file = %path.display(),
            version,
            n_metadata = metadata.len(),
            n_tensors = tensors.len(),
            alignment,
            data_offset,
            "opened GGUF file"
        );
        Ok(GgufFile {
            path,
            storage: Arc::new(storage),
            version,
            metadata,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensor infos, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Tensor `name` with its bytes, or [`GgufError::TensorNotFound`].
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::TensorNotFound {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        Ok(self.view(info))
    }

    /// Every tensor with its bytes, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.tensors.iter().map(|info| self.view(info))
    }

    /// Tensor `name`'s bytes without a copy: the file's shared bytes (the memory map stays
    /// alive as long as any holder does) and the tensor's byte range in them.
    pub fn shared_tensor(&self, name: &str) -> Result<(SharedBytes, std::ops::Range<usize>)> {
        let view = self.tensor(name)?;
        let start = (self.data_offset + view.info().offset()) as usize;
        let shared: SharedBytes = self.storage.clone();
        Ok((shared, start..start + view.data().len()))
    }

    /// Drops this process's mapped pages holding bytes `within` of tensor `name`'s data (whole
    /// 4 KiB pages, so a neighbour's page may go too): for a read-only file mapping nothing is
    /// lost, the next read loads them from the file again. A copy of a tensor made elsewhere
    /// then does not keep its mapped pages resident. Does nothing for a file held in memory.
    pub fn release_pages(&self, name: &str, within: std::ops::Range<usize>) -> Result<()> {
        let (_, range) = self.shared_tensor(name)?;
        let Storage::Mapped(map) = &*self.storage else {
            return Ok(());
        };
        let start = range.start + within.start.min(range.len());
        let end = range.start + within.end.min(range.len());
        release_mapped_pages(map, start, end.saturating_sub(start));
        Ok(())
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        // In bounds and without overflow: checked by `parse_gguf` for every tensor info.
        let start = (self.data_offset + info.offset()) as usize;
        let end = start + info.n_bytes() as usize;
        TensorView::new(info, &self.storage.bytes()[start..end])
    }
}
