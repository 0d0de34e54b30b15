//! Streaming detokenization: text is handed out as tokens arrive, never with half a UTF-8
//! character, and held back while it could still be the start of a stop string.

use crate::error::Result;
use crate::text::TextTokenizer;

/// What one more token added to the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStep {
    /// Text that is final now (may be empty while a character or a possible stop string is
    /// incomplete).
    pub text: String,
    /// A stop string was completed: generation should end. The stop string itself is not in
    /// the text.
    pub stopped: bool,
}

/// Turns generated ids into text incrementally.
///
/// Byte-level BPE tokens are byte sequences: a Chinese character or an emoji is often split
/// over two or three tokens, and decoding the ids so far would end in U+FFFD. The stream
/// decodes a window of recent ids and releases only text that no longer ends in an incomplete
/// character.
pub struct TextStream<'t> {
    tokenizer: &'t TextTokenizer,
    skip_special: bool,
    stop_strings: Vec<String>,
    ids: Vec<u32>,
    /// Start of the window decoded for context (its text is already released).
    prefix_offset: usize,
    /// End of the ids whose text is already released.
    read_offset: usize,
    /// Released by the detokenizer but held back for the stop-string check.
    pending: String,
    /// Everything handed out so far.
    emitted: String,
    stopped: bool,
}

impl<'t> TextStream<'t> {
    /// A stream that leaves special tokens out when `skip_special`, and ends at any of
    /// `stop_strings` (empty strings are ignored).
    pub fn new(tokenizer: &'t TextTokenizer, skip_special: bool, stop_strings: &[String]) -> Self {
        TextStream {
            tokenizer,
            skip_special,
            stop_strings: stop_strings
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            pending: String::new(),
            emitted: String::new(),
            stopped: false,
        }
    }

    /// Adds one generated id. Ids the tokenizer does not know (the padding rows of a model's
    /// embedding) add no text.
    pub fn push(&mut self, id: u32) -> Result<StreamStep> {
        if self.stopped {
            return Ok(StreamStep {
                text: String::new(),
                stopped: true,
            });
        }
        if self.tokenizer.check_ids(&[id]).is_err() {
            tracing::warn!(
                id,
                "generated id has no token in the tokenizer; no text for it"
            );
            return Ok(StreamStep::default());
        }
        self.ids.push(id);
        let before = self.decode(self.prefix_offset, self.read_offset)?;
        let now = self.decode(self.prefix_offset, self.ids.len())?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            let fresh = now[before.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            self.pending.push_str(&fresh);
        }
        Ok(self.release(false))
    }

    /// Ends the stream: returns whatever is still held back (an incomplete character comes
    /// out as U+FFFD, a partial stop string as plain text).
    pub fn finish(&mut self) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        let before = self.decode(self.prefix_offset, self.read_offset)?;
        let now = self.decode(self.prefix_offset, self.ids.len())?;
        if let Some(rest) = now.strip_prefix(before.as_str()) {
            self.pending.push_str(rest);
        }
        self.read_offset = self.ids.len();
        self.prefix_offset = self.read_offset;
        Ok(self.release(true).text)
    }

    /// All text handed out so far.
    pub fn text(&self) -> &str {
        &self.emitted
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn decode(&self, from: usize, to: usize) -> Result<String> {
        if from >= to {
            return Ok(String::new());
        }
        self.tokenizer
            .decode(&self.ids[from..to], self.skip_special)
    }

    /// Moves pending text out, stopping at a completed stop string and, unless `all`, keeping
    /// back a tail that could still grow into one.
    fn release(&mut self, all: bool) -> StreamStep {
        let first_stop = self
            .stop_strings
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        let (cut, stopped) = match first_stop {
            Some(pos) => (pos, true),
            None if all => (self.pending.len(), false),
            None => (self.pending.len() - self.held_tail_len(), false),
        };
        let text: String = self.pending[..cut].to_string();
        if stopped {
            self.pending.clear();
            self.stopped = true;
        } else {
            self.pending.drain(..cut);
        }
        self.emitted.push_str(&text);
        StreamStep { text, stopped }
    }

    /// Length of the longest tail of `pending` that is a proper prefix of a stop string.
    fn held_tail_len(&self) -> usize {
        let p = &self.pending;
        (1..=p.len())
            .rev()
            .filter(|&n| p.is_char_boundary(p.len() - n))
            .find(|&n| {
                let tail = &p[p.len() - n..];
                self.stop_strings
                    .iter()
                    .any(|s| s.len() > n && s.starts_with(tail))
            })
            .unwrap_or(0)
    }
}
