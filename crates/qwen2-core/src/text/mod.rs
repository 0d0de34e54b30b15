//! Text in, text out: the tokenizer, chat templates, `generation_config.json` and streaming
//! detokenization.

pub mod chat_template;
pub mod generation_config;
pub mod stream;
pub mod tokenizer;

pub use chat_template::{ChatTemplate, Message};
pub use generation_config::{GenerationConfig, SamplingOverrides};
pub use stream::{StreamStep, TextStream};
pub use tokenizer::TextTokenizer;
