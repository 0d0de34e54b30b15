//! The model's tokenizer: `tokenizer.json` read with the Hugging Face `tokenizers` crate (for a
//! GGUF model, the `tokenizer.json` rebuilt from its metadata: [`crate::gguf::tokenizer`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A byte-level BPE (or any `tokenizers`) tokenizer loaded from a model directory.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// Ids including added tokens (computed once: `tokenizers` rebuilds its vocabulary map to
    /// count it).
    vocab_size: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl TextTokenizer {
    /// Reads `dir/tokenizer.json`, or the tokenizer of a GGUF model when `dir` is one (a
    /// `.gguf` file, or a directory holding one and no config.json).
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if let Some(file) = crate::source::gguf_model_path(dir)? {
            return Self::from_gguf(&qwen2_gguf::GgufModel::open(file)?);
        }
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer {
                path,
                message: "not found: this model directory has no tokenizer.json, so it only \
                          takes token ids (--ids); copy the tokenizer.json of the model's \
                          Hugging Face repository next to config.json"
                    .into(),
            });
        }
        Self::from_file(path)
    }

    /// Reads a `tokenizer.json` file; a name ending in `.gz` is decompressed first.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let bytes = if path.extension().is_some_and(|e| e == "gz") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .map_err(|e| Error::Tokenizer {
                    path: path.clone(),
                    message: format!("not a valid gzip file: {e}"),
                })?;
            out
        } else {
            bytes
        };
        Self::from_json_bytes(&bytes, path)
    }

    /// Parses `tokenizer.json` text; `path` names where it came from in errors.
    pub fn from_json_bytes(bytes: &[u8], path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: format!("not a valid tokenizer.json: {e}"),
        })?;
        let vocab_size = inner.get_vocab_size(true);
        tracing::debug!(path = %path.display(), vocab = vocab_size, "tokenizer loaded");
        Ok(TextTokenizer {
            inner,
            path,
            vocab_size,
        })
    }

    /// The file this tokenizer came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of ids, added (special) tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of a token string such as `<|im_end|>`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes `text`; special tokens written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| self.error(format!("cannot encode text: {e}")))
    }

    /// Decodes `ids` to text; with `skip_special`, special tokens are left out.
    /// Fails on an id the vocabulary does not have.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.error(format!("cannot decode ids: {e}")))
    }

    /// Checks that every id is in the vocabulary.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids
            .iter()
            .enumerate()
            .find(|(_, &id)| self.inner.id_to_token(id).is_none())
        {
            Some((position, &id)) => Err(Error::TokenOutOfRange {
                id,
                position,
                vocab_size: self.vocab_size,
            }),
            None => Ok(()),
        }
    }

    fn error(&self, message: String) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }
}
