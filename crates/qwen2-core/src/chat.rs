//! Multi-turn chat over one KV cache: each turn feeds only what the conversation added since
//! the last one instead of re-running the whole history.

use burn::prelude::Backend;

use crate::error::{Error, Result};
use crate::generate::{generate_in_cache, Flow, GenerateOptions, Generation};
use crate::kv_cache::KvCache;
use crate::model::Qwen2Model;
use crate::text::{ChatTemplate, Message, TextStream, TextTokenizer};

/// Settings of every turn.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Token budget, sampling, eos ids and monitor of each reply.
    pub generate: GenerateOptions,
    /// A reply ends at the first of these strings (left out of the reply).
    pub stop_strings: Vec<String>,
    /// Extra chat-template variables, e.g. `{"enable_thinking": false}` for Qwen3 templates.
    pub template_vars: serde_json::Map<String, serde_json::Value>,
    /// When set (Ctrl-C, a client that went away), the reply ends after the current token;
    /// what was generated stays in the conversation.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// One answered turn.
#[derive(Debug, Clone)]
pub struct ChatTurn {
    /// The assistant's reply as shown to the user (no special tokens, no stop string).
    pub reply: String,
    /// Ids, timings and why generation stopped.
    pub generation: Generation,
    /// Positions of the conversation that were already in the KV cache.
    pub reused_tokens: usize,
    /// Positions this turn ran through the model before the first new token.
    pub prefilled_tokens: usize,
}

/// A conversation with a model, its tokenizer and chat template.
pub struct ChatSession<'m, B: Backend> {
    model: &'m Qwen2Model<B>,
    tokenizer: &'m TextTokenizer,
    template: &'m ChatTemplate,
    messages: Vec<Message>,
    cache: KvCache<B>,
    /// The ids in `cache`, in order.
    cached_ids: Vec<u32>,
    /// The text `cached_ids` encode (rendered conversation plus the fed part of the last reply).
    cached_text: String,
}

impl<'m, B: Backend> ChatSession<'m, B> {
    /// A new conversation, starting with a system message if `system` is given.
    pub fn new(
        model: &'m Qwen2Model<B>,
        tokenizer: &'m TextTokenizer,
        template: &'m ChatTemplate,
        system: Option<&str>,
    ) -> Self {
        let messages = system
            .map(|s| vec![Message::new("system", s)])
            .unwrap_or_default();
        Self::with_messages(model, tokenizer, template, messages)
    }

    /// A session that continues `messages` (they are prefilled on the next turn).
    pub fn with_messages(
        model: &'m Qwen2Model<B>,
        tokenizer: &'m TextTokenizer,
        template: &'m ChatTemplate,
        messages: Vec<Message>,
    ) -> Self {
        ChatSession {
            model,
            tokenizer,
            template,
            messages,
            cache: model.new_cache(512),
            cached_ids: Vec::new(),
            cached_text: String::new(),
        }
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Positions currently in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.cached_ids.len()
    }

    /// Forgets the conversation but its system message, and empties the KV cache.
    pub fn reset(&mut self) {
        self.messages.retain(|m| m.role == "system");
        self.messages.truncate(1);
        self.forget_cache();
    }

    fn forget_cache(&mut self) {
        self.cache.reset();
        self.cached_ids.clear();
        self.cached_text.clear();
    }

    /// Adds the user's `text`, generates the reply and calls `on_text` with each piece of it as
    /// it is decoded. On error the user message is taken back and the cache emptied, so the
    /// session stays usable.
    pub fn send(
        &mut self,
        text: &str,
        opts: &ChatOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<ChatTurn> {
        self.messages.push(Message::new("user", text));
        let result = self.answer(opts, &mut on_text);
        match result {
            Ok(turn) => {
                self.messages
                    .push(Message::new("assistant", turn.reply.clone()));
                Ok(turn)
            }
            Err(e) => {
                self.messages.pop();
                self.forget_cache();
                Err(e)
            }
        }
    }

    fn answer(&mut self, opts: &ChatOptions, on_text: &mut dyn FnMut(&str)) -> Result<ChatTurn> {
        let rendered = self
            .template
            .render(&self.messages, true, &opts.template_vars)?;
        let input = self.new_input(&rendered)?;
        let reused = self.cached_ids.len();
        let room = self.model.context_length();
        if reused + input.len() >= room {
            return Err(Error::ContextOverflow {
                requested: reused + input.len() + 1,
                capacity: room,
                limit: "the model's context length; start a new conversation (/reset)".into(),
            });
        }
        let eos = opts.generate.eos_token_ids.clone();
        let mut stream = TextStream::new(self.tokenizer, true, &opts.stop_strings);
        let generation = generate_in_cache(
            self.model,
            &mut self.cache,
            &self.cached_ids,
            &input,
            &opts.generate,
            |id| {
                if eos.contains(&id) {
                    return Ok(Flow::Continue);
                }
                let step = stream.push(id)?;
                if !step.text.is_empty() {
                    on_text(&step.text);
                }
                let cancelled = opts
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst));
                Ok(if step.stopped || cancelled {
                    Flow::Stop
                } else {
                    Flow::Continue
                })
            },
        )?;
        let rest = stream.finish()?;
        if !rest.is_empty() {
            on_text(&rest);
        }
        // The cache now holds the input and every generated id but the last.
        let fed = &generation.ids[..generation.ids.len().saturating_sub(1)];
        self.cached_ids.extend_from_slice(&input);
        self.cached_ids.extend_from_slice(fed);
        self.cached_text = rendered + &self.tokenizer.decode(fed, false)?;
        debug_assert_eq!(self.cache.len(), self.cached_ids.len());
        Ok(ChatTurn {
            reply: stream.text().to_string(),
            generation,
            reused_tokens: reused,
            prefilled_tokens: input.len(),
        })
    }

    /// The ids to feed for `rendered`: only the text after what is cached when the cached text
    /// is a prefix of it, else everything after the longest common prefix of ids (the cache is
    /// cut back to it).
    fn new_input(&mut self, rendered: &str) -> Result<Vec<u32>> {
        if !self.cached_text.is_empty() {
            if let Some(suffix) = rendered.strip_prefix(self.cached_text.as_str()) {
                if !suffix.is_empty() {
                    return self.tokenizer.encode(suffix);
                }
            }
        }
        let full = self.tokenizer.encode(rendered)?;
        let mut common = self
            .cached_ids
            .iter()
            .zip(&full)
            .take_while(|(a, b)| a == b)
            .count();
        if common == full.len() {
            common -= 1; // at least one id must be fed to get logits
        }
        tracing::debug!(
            cached = self.cached_ids.len(),
            common,
            "conversation diverged from the cache; keeping the common prefix"
        );
        self.cache.truncate(common);
        self.cached_ids.truncate(common);
        self.cached_text.clear();
        Ok(full[common..].to_vec())
    }
}
