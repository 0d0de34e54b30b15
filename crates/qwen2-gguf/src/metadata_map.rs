//! [`Metadata`]: a GGUF file's key→value map, with typed getters whose errors name the file,
//! the key and the type found.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::metadata::{MetadataArray, MetadataValue};

/// The metadata of one GGUF file: keys in file order, with typed getters.
///
/// Integer getters accept any integer type whose value fits (llama.cpp files use `u32`, `i32`
/// and `u64` for counts interchangeably); float getters accept `f32` and `f64`.
#[derive(Debug, Clone)]
pub struct Metadata {
    path: PathBuf,
    entries: Vec<(String, MetadataValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty map whose errors name `path`.
    pub(crate) fn new(path: &Path) -> Self {
        Metadata {
            path: path.to_path_buf(),
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Adds a key; returns `false` (and keeps the first value) when it is already present.
    pub(crate) fn insert(&mut self, key: String, value: MetadataValue) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    /// The file the metadata was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The keys and values in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The value of `key`, or [`GgufError::MissingKey`].
    pub fn require(&self, key: &str) -> Result<&MetadataValue> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    /// Runs `getter` if `key` is present: `Ok(None)` when absent, the getter's error when
    /// present with the wrong type. E.g. `meta.optional("a.b", Metadata::get_u32)`.
    pub fn optional<'a, T>(
        &'a self,
        key: &str,
        getter: impl FnOnce(&'a Self, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.contains(key) {
            getter(self, key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &MetadataValue) -> GgufError {
        GgufError::WrongValueType {
            path: self.path.clone(),
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.describe(),
        }
    }

    fn get_integer<T: TryFrom<i128>>(&self, key: &str, expected: &str) -> Result<T> {
        let value = self.require(key)?;
        value
            .as_i128()
            .and_then(|x| T::try_from(x).ok())
            .ok_or_else(|| self.wrong_type(key, expected, value))
    }

    /// An integer value that fits `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_integer(key, "an integer in the range of u32")
    }

    /// An integer value that fits `i32`.
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.get_integer(key, "an integer in the range of i32")
    }

    /// An integer value that fits `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_integer(key, "an integer in the range of u64")
    }

    /// An integer value that fits `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_integer(key, "an integer in the range of i64")
    }

    /// An integer value that fits `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.get_integer(key, "a non-negative integer in the range of usize")
    }

    /// An `f32` value, or an `f64` value rounded to `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let value = self.require(key)?;
        match *value {
            MetadataValue::F32(x) => Ok(x),
            MetadataValue::F64(x) => Ok(x as f32),
            _ => Err(self.wrong_type(key, "a float (f32 or f64)", value)),
        }
    }

    /// An `f64` or `f32` value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let value = self.require(key)?;
        value
            .as_f64()
            .ok_or_else(|| self.wrong_type(key, "a float (f32 or f64)", value))
    }

    /// A `bool` value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let value = self.require(key)?;
        match *value {
            MetadataValue::Bool(b) => Ok(b),
            _ => Err(self.wrong_type(key, "a bool", value)),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let value = self.require(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", value))
    }

    /// An array value of any element type.
    pub fn get_array(&self, key: &str) -> Result<&MetadataArray> {
        let value = self.require(key)?;
        value
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "an array", value))
    }

    /// An array of strings.
    pub fn get_string_array(&self, key: &str) -> Result<&[String]> {
        let value = self.require(key)?;
        match value {
            MetadataValue::Array(MetadataArray::String(v)) => Ok(v),
            _ => Err(self.wrong_type(key, "an array of strings", value)),
        }
    }

    /// An array of `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        let value = self.require(key)?;
        match value {
            MetadataValue::Array(MetadataArray::F32(v)) => Ok(v),
            _ => Err(self.wrong_type(key, "an array of f32", value)),
        }
    }

    /// An array of any integer type, widened to `i64` (e.g. token types, stored as `i32`).
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let value = self.require(key)?;
        value
            .as_array()
            .and_then(MetadataArray::to_i64_vec)
            .ok_or_else(|| self.wrong_type(key, "an array of integers", value))
    }
}
