//! A model stored as one GGUF file or as a llama.cpp `gguf-split` set
//! (`NAME-00001-of-00003.gguf`, …), opened from a file or from a directory.
//!
//! Every shard of a split set is a complete GGUF file with the keys `split.no` (0-based),
//! `split.count` and `split.tensors.count`; the model's metadata is the first shard's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::file::GgufFile;
use crate::metadata_map::Metadata;
use crate::tensor::{TensorInfo, TensorView};

/// Key: 0-based index of a shard.
pub const SPLIT_NO_KEY: &str = "split.no";
/// Key: number of shards.
pub const SPLIT_COUNT_KEY: &str = "split.count";
/// Key: number of tensors in all shards together.
pub const SPLIT_TENSORS_COUNT_KEY: &str = "split.tensors.count";

/// The file name of shard `index` (0-based) of `count`, e.g. `NAME-00001-of-00003.gguf`
/// (the format of llama.cpp's `llama_split_path`).
pub fn split_file_name(prefix: &str, index: usize, count: usize) -> String {
    format!("{prefix}-{:05}-of-{count:05}.gguf", index + 1)
}

/// Parses `NAME-0000i-of-0000n.gguf` into `(NAME, i - 1, n)`.
pub fn parse_split_file_name(file_name: &str) -> Option<(&str, usize, usize)> {
    let stem = file_name.strip_suffix(".gguf")?;
    let (left, count) = stem.rsplit_once("-of-")?;
    let (prefix, number) = left.rsplit_once('-')?;
    let is_number = |s: &str| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if prefix.is_empty() || !is_number(number) || !is_number(count) {
        return None;
    }
    let (number, count): (usize, usize) = (number.parse().ok()?, count.parse().ok()?);
    (1..=count)
        .contains(&number)
        .then_some((prefix, number - 1, count))
}

/// A model: one GGUF file or all shards of a split set, with tensor lookup across shards.
#[derive(Debug)]
pub struct GgufModel {
    shards: Vec<GgufFile>,
    locations: HashMap<String, (usize, usize)>,
}

impl GgufModel {
    /// Opens a `.gguf` file (any shard of a split set opens the whole set) or a directory
    /// holding exactly one model (one `.gguf` file or one split set).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            model_file_in_directory(path)?
        } else {
            path.to_path_buf()
        };
        let shard_paths = shard_paths_for(&file)?;
        let shards = shard_paths
            .iter()
            .map(GgufFile::open)
            .collect::<Result<Vec<_>>>()?;
        Self::from_shards(shards)
    }

    /// A model from already opened shards, in order (a single file is one shard). Checks the
    /// `split.*` keys and that no tensor name appears twice.
    pub fn from_shards(shards: Vec<GgufFile>) -> Result<Self> {
        let first = shards.first().ok_or_else(|| {
            GgufError::InvalidArgument("a model needs at least one GGUF file".into())
        })?;
        check_split_keys(&shards)?;
        let mut locations = HashMap::new();
        for (s, shard) in shards.iter().enumerate() {
            for (t, info) in shard.tensor_infos().iter().enumerate() {
                if let Some((other, _)) = locations.insert(info.name().to_string(), (s, t)) {
                    return Err(GgufError::Split {
                        path: shard.path().to_path_buf(),
                        detail: format!(
                            "tensor `{}` is also in shard {}",
                            info.name(),
                            shards[other].path().display()
                        ),
                    });
                }
            }
        }
        tracing::debug!(
            file = %first.path().display(),
            n_shards = shards.len(),
            n_tensors = locations.len(),
            "opened GGUF model"
        );
        Ok(GgufModel { shards, locations })
    }

    /// The shards, in order (one for a single-file model).
    pub fn shards(&self) -> &[GgufFile] {
        &self.shards
    }

    /// The path of the first (or only) file.
    pub fn path(&self) -> &Path {
        self.shards[0].path()
    }

    /// The model's metadata (the first shard's).
    pub fn metadata(&self) -> &Metadata {
        self.shards[0].metadata()
    }

    /// The number of tensors in all shards.
    pub fn tensor_count(&self) -> usize {
        self.locations.len()
    }

    /// The info of tensor `name`, in whichever shard holds it.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let &(s, t) = self.locations.get(name)?;
        Some(&self.shards[s].tensor_infos()[t])
    }

    /// Tensor `name` with its bytes, or [`GgufError::TensorNotFound`].
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        match self.locations.get(name) {
            Some(&(s, _)) => self.shards[s].tensor(name),
            None => Err(GgufError::TensorNotFound {
                path: self.path().to_path_buf(),
                name: name.to_string(),
            }),
        }
    }

    /// Tensor `name`'s bytes without a copy (see [`GgufFile::shared_tensor`]).
    pub fn shared_tensor(
        &self,
        name: &str,
    ) -> Result<(crate::file::SharedBytes, std::ops::Range<usize>)> {
        match self.locations.get(name) {
            Some(&(s, _)) => self.shards[s].shared_tensor(name),
            None => Err(GgufError::TensorNotFound {
                path: self.path().to_path_buf(),
                name: name.to_string(),
            }),
        }
    }

    /// [`GgufFile::release_pages`] for tensor `name` in whichever shard holds it.
    pub fn release_pages(&self, name: &str, within: std::ops::Range<usize>) -> Result<()> {
        match self.locations.get(name) {
            Some(&(s, _)) => self.shards[s].release_pages(name, within),
            None => Err(GgufError::TensorNotFound {
                path: self.path().to_path_buf(),
                name: name.to_string(),
            }),
        }
    }

    /// Every tensor of every shard, shard by shard in file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.shards.iter().flat_map(GgufFile::tensors)
    }
}

/// The one model file (or first shard) in `dir`.
fn model_file_in_directory(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| GgufError::io(dir, e))?;
    let mut candidates: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| GgufError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".gguf") || !entry.path().is_file() {
            continue;
        }
        let candidate = match parse_split_file_name(&name) {
            Some((prefix, _, count)) => dir.join(split_file_name(prefix, 0, count)),
            None => entry.path(),
        };
        if !candidates.contains(&candidate) {
            candidates.push(candidate);
        }
    }
    candidates.sort();
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(GgufError::Split {
            path: dir.to_path_buf(),
            detail: "the directory holds no .gguf file".into(),
        }),
        _ => Err(GgufError::Split {
            path: dir.to_path_buf(),
            detail: format!(
                "the directory holds several models, pass one file: {}",
                candidates
                    .iter()
                    .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// All shard paths of the set `file` belongs to (just `file` when not a split name).
fn shard_paths_for(file: &Path) -> Result<Vec<PathBuf>> {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let Some((prefix, _, count)) = parse_split_file_name(&name) else {
        return Ok(vec![file.to_path_buf()]);
    };
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| file.with_file_name(split_file_name(prefix, i, count)))
        .collect();
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    if !missing.is_empty() {
        return Err(GgufError::Split {
            path: file.to_path_buf(),
            detail: format!("split set of {count} is missing: {}", missing.join(", ")),
        });
    }
    Ok(paths)
}

/// Checks `split.no`, `split.count` and `split.tensors.count` against the shards given.
fn check_split_keys(shards: &[GgufFile]) -> Result<()> {
    let first = shards[0].metadata();
    let declared = first.optional(SPLIT_COUNT_KEY, Metadata::get_usize)?;
    let split_error = |shard: &GgufFile, detail: String| GgufError::Split {
        path: shard.path().to_path_buf(),
        detail,
    };
    match declared {
        None if shards.len() == 1 => return Ok(()),
        None => {
            return Err(split_error(
                &shards[0],
                format!(
                    "{} shards found but `{SPLIT_COUNT_KEY}` is missing",
                    shards.len()
                ),
            ))
        }
        Some(count) if count != shards.len() => {
            return Err(split_error(
                &shards[0],
                format!(
                    "`{SPLIT_COUNT_KEY}` is {count}, but {} shard file(s) were found (split \
                     files must be named NAME-00001-of-{count:05}.gguf, …)",
                    shards.len()
                ),
            ))
        }
        Some(_) => {}
    }
    for (i, shard) in shards.iter().enumerate() {
        let meta = shard.metadata();
        let no = meta.optional(SPLIT_NO_KEY, Metadata::get_usize)?;
        if no.is_some_and(|no| no != i) || (no.is_none() && shards.len() > 1) {
            return Err(split_error(
                shard,
                format!(
                    "`{SPLIT_NO_KEY}` is {no:?}, expected {i} for shard {}",
                    i + 1
                ),
            ));
        }
        let count = meta.optional(SPLIT_COUNT_KEY, Metadata::get_usize)?;
        if count.is_some_and(|c| c != shards.len()) {
            return Err(split_error(
                shard,
                format!(
                    "`{SPLIT_COUNT_KEY}` is {count:?}, expected {}",
                    shards.len()
                ),
            ));
        }
    }
    let total: usize = shards.iter().map(|s| s.tensor_infos().len()).sum();
    if let Some(expected) = first.optional(SPLIT_TENSORS_COUNT_KEY, Metadata::get_usize)? {
        if expected != total {
            return Err(split_error(
                &shards[0],
                format!("`{SPLIT_TENSORS_COUNT_KEY}` is {expected}, but the shards hold {total}"),
            ));
        }
    }
    Ok(())
}
