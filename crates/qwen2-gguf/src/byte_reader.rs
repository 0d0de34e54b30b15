//! A bounds-checked little-endian cursor over a file's bytes: every read that would run past
//! the end is a [`GgufError::Corrupt`] naming the file, the field and the offset.

use std::path::Path;

use crate::error::{GgufError, Result};

/// A cursor over `data`, the whole content of the file at `path`.
pub(crate) struct ByteReader<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    /// A cursor at offset 0.
    pub(crate) fn new(path: &'a Path, data: &'a [u8]) -> Self {
        ByteReader { path, data, pos: 0 }
    }

    /// The current offset from the start of the file.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the current offset.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// The file's path, for error messages.
    pub(crate) fn path(&self) -> &'a Path {
        self.path
    }

    /// A [`GgufError::Corrupt`] for this file.
    pub(crate) fn corrupt(&self, detail: impl Into<String>) -> GgufError {
        GgufError::corrupt(self.path, detail)
    }

    /// The next `n` bytes; `what` names the field for the error when the file is too short.
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let available = self.remaining();
        match usize::try_from(n) {
            Ok(n) if n <= available => {
                let bytes = &self.data[self.pos..self.pos + n];
                self.pos += n;
                Ok(bytes)
            }
            _ => Err(self.corrupt(format!(
                "truncated: {what} needs {n} bytes at offset {}, but only {available} remain \
                 (file size {})",
                self.pos,
                self.data.len()
            ))),
        }
    }

    fn take_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// A `u8`.
    pub(crate) fn read_u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take_array::<1>(what)?[0])
    }

    /// A little-endian `u16`.
    pub(crate) fn read_u16(&mut self, what: &str) -> Result<u16> {
        self.take_array(what).map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub(crate) fn read_u32(&mut self, what: &str) -> Result<u32> {
        self.take_array(what).map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub(crate) fn read_u64(&mut self, what: &str) -> Result<u64> {
        self.take_array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: `u64` byte length, then UTF-8 bytes. Invalid UTF-8 is replaced (with a
    /// warning) rather than rejected: some converted vocabularies hold raw byte tokens.
    pub(crate) fn read_string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let len = self.read_u64(what)?;
        let available = self.remaining();
        if len > available as u64 {
            return Err(self.corrupt(format!(
                "{what}: string length {len} at offset {start} exceeds the {available} bytes \
                 left in the file"
            )));
        }
        let bytes = self.take(len, what)?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => s.to_string(),
            Err(_) => {
                tracing::warn!(
                    file = %self.path.display(),
                    offset = start,
                    "{what}: string is not valid UTF-8; invalid bytes replaced"
                );
                String::from_utf8_lossy(bytes).into_owned()
            }
        })
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in the rest of the
    /// file, so that a corrupt count never causes a huge allocation.
    pub(crate) fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        let available = self.remaining() as u64;
        match count.checked_mul(min_size) {
            Some(needed) if needed <= available => Ok(()),
            _ => Err(self.corrupt(format!(
                "{what}: count {count} at offset {} needs at least {min_size} bytes each, but \
                 only {available} bytes remain",
                self.pos
            ))),
        }
    }
}
