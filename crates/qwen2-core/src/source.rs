//! Where a model comes from: a Hugging Face directory (`config.json`, `*.safetensors`,
//! tokenizer files) or a GGUF model (one `.gguf` file, a `gguf-split` set
//! `NAME-0000i-of-0000n.gguf`, or a directory holding exactly one of those and no
//! `config.json`). Every loader (`Qwen2Model::load`, `Checkpoint::open`, the tokenizer, the chat
//! template, the CLI's `--model`) resolves its path here.

use std::path::{Path, PathBuf};

use qwen2_gguf::{parse_split_file_name, split_file_name, GgufModel, GGUF_MAGIC};

use crate::config::Qwen2Config;
use crate::error::{Error, Result};
use crate::weights::Checkpoint;

/// A resolved model path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face model directory.
    HfDir(PathBuf),
    /// A GGUF model: the file, or the first shard of a split set.
    Gguf(PathBuf),
}

impl ModelSource {
    /// Resolves `path`: a `.gguf` file (any shard of a split set stands for the set), a
    /// directory holding one GGUF model and no `config.json`, or else a Hugging Face
    /// directory. Errors: nothing at `path`, a file that is not GGUF, a directory with both
    /// `config.json` and a `.gguf` model, or with several `.gguf` models.
    pub fn resolve(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        if let Some(file) = gguf_model_path(path)? {
            return Ok(ModelSource::Gguf(file));
        }
        if !path.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: is a file, but not a GGUF file; give a model directory (config.json, \
                 *.safetensors, tokenizer.json) or a .gguf file",
                path.display()
            )));
        }
        Ok(ModelSource::HfDir(path.to_path_buf()))
    }

    /// The directory or the (first) GGUF file.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::HfDir(p) | ModelSource::Gguf(p) => p,
        }
    }

    /// Whether this is a GGUF model.
    pub fn is_gguf(&self) -> bool {
        matches!(self, ModelSource::Gguf(_))
    }

    /// Opens the GGUF model (all shards), or `None` for a Hugging Face directory.
    pub fn open_gguf(&self) -> Result<Option<GgufModel>> {
        match self {
            ModelSource::HfDir(_) => Ok(None),
            ModelSource::Gguf(file) => Ok(Some(GgufModel::open(file)?)),
        }
    }

    /// The model's configuration: `config.json`, or the GGUF metadata.
    pub fn config(&self) -> Result<Qwen2Config> {
        match self {
            ModelSource::HfDir(dir) => Qwen2Config::from_file(dir.join("config.json")),
            ModelSource::Gguf(file) => Qwen2Config::from_gguf(&GgufModel::open(file)?),
        }
    }

    /// The model's weights.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        match self {
            ModelSource::HfDir(dir) => Checkpoint::open(dir),
            ModelSource::Gguf(file) => Ok(Checkpoint::from_gguf(GgufModel::open(file)?)),
        }
    }
}

impl Qwen2Config {
    /// The configuration of a model path of any kind (see [`ModelSource::resolve`]).
    pub fn from_model(path: impl AsRef<Path>) -> Result<Self> {
        ModelSource::resolve(path)?.config()
    }
}

/// The GGUF model `path` names, if it names one: a GGUF file (by its `.gguf` name or its
/// magic; a shard of a split set gives the set's first shard), or a directory without
/// `config.json` holding exactly one GGUF model. `Ok(None)` for anything else (a Hugging Face
/// directory, a missing path); an error for a directory that is ambiguous.
pub fn gguf_model_path(path: &Path) -> Result<Option<PathBuf>> {
    if path.is_file() {
        return Ok(is_gguf_file(path).then(|| first_shard(path)));
    }
    if !path.is_dir() {
        return Ok(None);
    }
    let models = gguf_models_in(path)?;
    let has_config = path.join("config.json").is_file();
    let names = || {
        models
            .iter()
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (has_config, models.len()) {
        (_, 0) => Ok(None),
        (true, _) => Err(Error::Invalid(format!(
            "{}: holds both config.json (a Hugging Face model) and a GGUF model ({}); pass the \
             .gguf file itself to load the GGUF model, or a directory with only one of them",
            path.display(),
            names()
        ))),
        (false, 1) => Ok(models.into_iter().next()),
        (false, _) => Err(Error::Invalid(format!(
            "{}: holds several GGUF models ({}); pass one .gguf file",
            path.display(),
            names()
        ))),
    }
}

/// Whether `path` is named `*.gguf` or starts with the GGUF magic.
fn is_gguf_file(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|_| magic == GGUF_MAGIC)
}

/// The first shard of the split set `file` belongs to (`file` itself when not a split name).
fn first_shard(file: &Path) -> PathBuf {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    match parse_split_file_name(&name) {
        Some((prefix, _, count)) => file.with_file_name(split_file_name(prefix, 0, count)),
        None => file.to_path_buf(),
    }
}

/// The GGUF models in `dir` (each split set once, by its first shard), sorted.
fn gguf_models_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut models = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".gguf") || !entry.path().is_file() {
            continue;
        }
        let model = first_shard(&entry.path());
        if !models.contains(&model) {
            models.push(model);
        }
    }
    models.sort();
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_files_shards_and_directories() {
        let tmp = std::env::temp_dir().join(format!("qwen2-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("split")).unwrap();
        std::fs::write(tmp.join("a.gguf"), b"GGUF").unwrap();
        for i in 0..2 {
            std::fs::write(tmp.join("split").join(split_file_name("m", i, 2)), b"GGUF").unwrap();
        }
        let second = tmp.join("split").join(split_file_name("m", 1, 2));
        let first = tmp.join("split").join(split_file_name("m", 0, 2));
        assert_eq!(
            ModelSource::resolve(&second).unwrap(),
            ModelSource::Gguf(first.clone())
        );
        assert_eq!(
            ModelSource::resolve(tmp.join("split")).unwrap(),
            ModelSource::Gguf(first)
        );
        assert_eq!(
            ModelSource::resolve(&tmp).unwrap(),
            ModelSource::Gguf(tmp.join("a.gguf"))
        );
        std::fs::write(tmp.join("b.gguf"), b"GGUF").unwrap();
        let e = ModelSource::resolve(&tmp).unwrap_err().to_string();
        assert!(
            e.contains("several GGUF models") && e.contains("a.gguf, b.gguf"),
            "{e}"
        );
        std::fs::write(tmp.join("split/config.json"), b"{}").unwrap();
        let e = ModelSource::resolve(tmp.join("split"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("both config.json"), "{e}");
        let e = ModelSource::resolve(tmp.join("nothing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file or directory"), "{e}");
        let e = ModelSource::resolve(tmp.join("split/config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a GGUF file"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
