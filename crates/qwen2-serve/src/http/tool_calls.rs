//! Qwen2.5 / Hermes tool calls: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`
//! blocks in the generated text, parsed whole ([`parse_tool_calls`]) or while streaming
//! ([`ToolCallStreamParser`]); both give the same result for the same text.
//!
//! Rules (as vLLM's Hermes parser): the content is the text before the first `<tool_call>`;
//! each block `<tool_call>(.*?)</tool_call>`, or an unclosed `<tool_call>(.*)` at the end, holds
//! one JSON object with `name` and `arguments`; if any block is not such JSON, the whole text is
//! plain content. Special tokens the engine kept (`<|im_end|>`, ...) are removed first.

use serde_json::Value;

/// Opening tag of a tool call.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closing tag of a tool call.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// Special tokens removed from the text when the engine keeps special tokens.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"];

/// One parsed tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToolCall {
    /// The function's name.
    pub name: String,
    /// The arguments object as a JSON string (as OpenAI sends `arguments`).
    pub arguments: String,
}

/// The answer split into content and tool calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAnswer {
    /// Text before the first call (`None` when empty and there are calls).
    pub content: Option<String>,
    /// The calls, in order.
    pub calls: Vec<ParsedToolCall>,
}

/// Removes the special tokens in [`SPECIAL_TOKENS`].
pub fn strip_special_tokens(text: &str) -> String {
    let mut out = text.to_string();
    for token in SPECIAL_TOKENS {
        if out.contains(token) {
            out = out.replace(token, "");
        }
    }
    out
}

/// Parses a whole answer (special tokens already stripped or not: they are removed here).
pub fn parse_tool_calls(text: &str) -> ParsedAnswer {
    let clean = strip_special_tokens(text);
    let Some(start) = clean.find(TOOL_CALL_OPEN) else {
        return ParsedAnswer {
            content: Some(clean),
            calls: Vec::new(),
        };
    };
    match parse_call_blocks(&clean[start..]) {
        Some(calls) => {
            let before = &clean[..start];
            ParsedAnswer {
                content: (!before.is_empty()).then(|| before.to_string()),
                calls,
            }
        }
        None => ParsedAnswer {
            content: Some(clean),
            calls: Vec::new(),
        },
    }
}

/// Parses the text from the first `<tool_call>` on; `None` when any block is invalid.
fn parse_call_blocks(mut text: &str) -> Option<Vec<ParsedToolCall>> {
    let mut calls = Vec::new();
    while let Some(open) = text.find(TOOL_CALL_OPEN) {
        let body_start = open + TOOL_CALL_OPEN.len();
        let rest = &text[body_start..];
        let (body, next) = match rest.find(TOOL_CALL_CLOSE) {
            Some(close) => (&rest[..close], &rest[close + TOOL_CALL_CLOSE.len()..]),
            None => (rest, ""),
        };
        calls.push(parse_call_body(body)?);
        text = next;
    }
    Some(calls)
}

fn parse_call_body(body: &str) -> Option<ParsedToolCall> {
    let value: Value = serde_json::from_str(body.trim()).ok()?;
    let object = value.as_object()?;
    let name = object.get("name")?.as_str()?.to_string();
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(already_encoded)) => already_encoded.clone(),
        Some(arguments) => serde_json::to_string(arguments).ok()?,
    };
    Some(ParsedToolCall { name, arguments })
}

/// What the streaming parser releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolStreamOutput {
    /// Plain content to send now.
    Content(String),
    /// A complete tool call.
    Call(ParsedToolCall),
}

/// Incremental version of [`parse_tool_calls`]: content is released as soon as it cannot be
/// the start of a tag or special token; from the first `<tool_call>` on, text is buffered and
/// decided at [`finish`](Self::finish) (calls, or all plain content if any block is invalid).
#[derive(Debug, Default)]
pub struct ToolCallStreamParser {
    /// Raw text not yet cleared of special tokens (a possible special-token prefix).
    special_pending: String,
    /// Cleaned text not yet released (a possible `<tool_call>` prefix).
    content_pending: String,
    /// From the first `<tool_call>` on (cleaned), once seen.
    calls_buffer: Option<String>,
}

impl ToolCallStreamParser {
    /// A parser at the start of an answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds new text; returns the content that can be sent now (possibly empty).
    pub fn push(&mut self, text: &str) -> String {
        self.special_pending.push_str(text);
        let clean = take_releasable(&mut self.special_pending, &SPECIAL_TOKENS, true);
        self.push_clean(&clean)
    }

    fn push_clean(&mut self, clean: &str) -> String {
        if let Some(buffer) = &mut self.calls_buffer {
            buffer.push_str(clean);
            return String::new();
        }
        self.content_pending.push_str(clean);
        if let Some(open) = self.content_pending.find(TOOL_CALL_OPEN) {
            let calls = self.content_pending.split_off(open);
            self.calls_buffer = Some(calls);
            return std::mem::take(&mut self.content_pending);
        }
        take_releasable(&mut self.content_pending, &[TOOL_CALL_OPEN], false)
    }

    /// Ends the answer: the remaining content and the calls.
    pub fn finish(mut self) -> Vec<ToolStreamOutput> {
        let rest = strip_special_tokens(&std::mem::take(&mut self.special_pending));
        let mut outputs = Vec::new();
        let content = self.push_clean(&rest);
        if !content.is_empty() {
            outputs.push(ToolStreamOutput::Content(content));
        }
        match self.calls_buffer.take() {
            None => {
                if !self.content_pending.is_empty() {
                    outputs.push(ToolStreamOutput::Content(std::mem::take(
                        &mut self.content_pending,
                    )));
                }
            }
            Some(buffer) => match parse_call_blocks(&buffer) {
                Some(calls) => outputs.extend(calls.into_iter().map(ToolStreamOutput::Call)),
                None => outputs.push(ToolStreamOutput::Content(buffer)),
            },
        }
        outputs
    }
}

/// Takes the part of `pending` that can be released: with `strip`, removes every complete
/// marker first; keeps back the longest suffix that is a proper prefix of a marker.
fn take_releasable(pending: &mut String, markers: &[&str], strip: bool) -> String {
    if strip {
        let stripped = strip_special_tokens(pending);
        *pending = stripped;
    }
    let keep_from = held_back_start(pending, markers);
    let kept = pending.split_off(keep_from);
    std::mem::replace(pending, kept)
}

/// Byte index where the longest suffix of `text` that is a proper prefix of a marker begins
/// (`text.len()` when none).
fn held_back_start(text: &str, markers: &[&str]) -> usize {
    let longest = markers.iter().map(|marker| marker.len()).max().unwrap_or(0);
    let earliest = text.len().saturating_sub(longest.saturating_sub(1));
    (earliest..text.len())
        .filter(|&start| text.is_char_boundary(start))
        .find(|&start| {
            let suffix = &text[start..];
            markers
                .iter()
                .any(|marker| marker.len() > suffix.len() && marker.starts_with(suffix))
        })
        .unwrap_or(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> ParsedToolCall {
        ParsedToolCall {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// Streams `text` in pieces of `size` characters and joins the result like a client.
    fn streamed(text: &str, size: usize) -> ParsedAnswer {
        let chars: Vec<char> = text.chars().collect();
        let mut parser = ToolCallStreamParser::new();
        let mut content = String::new();
        for piece in chars.chunks(size) {
            content.push_str(&parser.push(&piece.iter().collect::<String>()));
        }
        let mut calls = Vec::new();
        for output in parser.finish() {
            match output {
                ToolStreamOutput::Content(text) => content.push_str(&text),
                ToolStreamOutput::Call(call) => calls.push(call),
            }
        }
        let content = if content.is_empty() && !calls.is_empty() {
            None
        } else {
            Some(content)
        };
        ParsedAnswer { content, calls }
    }

    fn check(text: &str, expected: ParsedAnswer) {
        assert_eq!(parse_tool_calls(text), expected, "whole: {text:?}");
        for size in 1..=8 {
            assert_eq!(streamed(text, size), expected, "size {size}: {text:?}");
        }
    }

    #[test]
    fn plain_text_passes_through() {
        let text = "Hello <b>world</b> a < b, <tool and <|im_sta";
        check(
            text,
            ParsedAnswer {
                content: Some(text.into()),
                calls: vec![],
            },
        );
    }

    #[test]
    fn special_tokens_are_removed() {
        check(
            "Hi there<|im_end|>",
            ParsedAnswer {
                content: Some("Hi there".into()),
                calls: vec![],
            },
        );
    }

    #[test]
    fn one_call() {
        check(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>",
            ParsedAnswer {
                content: None,
                calls: vec![call("get_weather", "{\"city\":\"Paris\"}")],
            },
        );
    }

    #[test]
    fn two_calls_with_content_before() {
        check(
            "Let me check.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>",
            ParsedAnswer {
                content: Some("Let me check.\n".into()),
                calls: vec![call("a", "{\"x\":1}"), call("b", "{}")],
            },
        );
    }

    #[test]
    fn unclosed_call_at_the_end() {
        check(
            "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"q\": \"ü\"}}\n",
            ParsedAnswer {
                content: None,
                calls: vec![call("a", "{\"q\":\"ü\"}")],
            },
        );
    }

    #[test]
    fn invalid_json_is_plain_content() {
        let text = "Sure: <tool_call>\n{\"name\": \"a\", \"arguments\": {oops}\n</tool_call>";
        check(
            text,
            ParsedAnswer {
                content: Some(text.into()),
                calls: vec![],
            },
        );
        let second_bad = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>nope</tool_call>";
        check(
            second_bad,
            ParsedAnswer {
                content: Some(second_bad.into()),
                calls: vec![],
            },
        );
    }

    #[test]
    fn string_arguments_are_not_encoded_twice() {
        check(
            "<tool_call>{\"name\": \"a\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>",
            ParsedAnswer {
                content: None,
                calls: vec![call("a", "{\"x\": 1}")],
            },
        );
    }

    #[test]
    fn held_back_prefix_is_released_when_ruled_out() {
        let mut parser = ToolCallStreamParser::new();
        assert_eq!(parser.push("a <tool"), "a ");
        assert_eq!(parser.push("box"), "<toolbox");
        assert_eq!(parser.push(" <|im_"), " ");
        assert_eq!(parser.push("end|>x"), "x");
        assert!(parser.finish().is_empty());
    }
}
