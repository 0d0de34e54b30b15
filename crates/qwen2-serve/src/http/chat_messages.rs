//! Turns a chat request's messages, tools and tool options into what the chat template sees.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::request::{ChatMessageIn, ToolCallIn};
use crate::engine_api::TemplateMessage;

/// How the chat request wants tools handled.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSetup {
    /// OpenAI tool objects to pass to the template (`None`: no tools).
    pub tools: Option<Vec<Value>>,
    /// Parse `<tool_call>` blocks out of the answer (tools given and `tool_choice` not "none").
    pub parse_calls: bool,
}

/// Converts the messages into template messages: content parts joined into one string,
/// assistant tool-call arguments parsed from their JSON strings into objects.
pub fn template_messages(messages: &[ChatMessageIn]) -> Result<Vec<TemplateMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(index, message)| template_message(index, message))
        .collect()
}

fn template_message(index: usize, message: &ChatMessageIn) -> Result<TemplateMessage, ApiError> {
    let role = match message.role.as_str() {
        "developer" => "system",
        role @ ("system" | "user" | "assistant" | "tool") => role,
        other => {
            return Err(ApiError::invalid(
                format!("messages[{index}].role"),
                format!(
                    "unknown role {other:?}: expected system, developer, user, assistant or tool"
                ),
            ))
        }
    };
    let has_tool_calls = message
        .tool_calls
        .as_ref()
        .is_some_and(|calls| !calls.is_empty());
    let content = content_text(index, &message.content)?;
    if content.is_none() && !(role == "assistant" && has_tool_calls) {
        return Err(ApiError::invalid(
            format!("messages[{index}].content"),
            format!("a {role} message needs `content`"),
        ));
    }
    let mut out = Map::new();
    out.insert("role".into(), Value::String(role.into()));
    out.insert(
        "content".into(),
        content.map(Value::String).unwrap_or(Value::Null),
    );
    if let Some(name) = &message.name {
        out.insert("name".into(), Value::String(name.clone()));
    }
    if has_tool_calls {
        if role != "assistant" {
            return Err(ApiError::invalid(
                format!("messages[{index}].tool_calls"),
                "only assistant messages can have `tool_calls`",
            ));
        }
        let calls = message.tool_calls.as_deref().unwrap_or_default();
        let calls = calls
            .iter()
            .enumerate()
            .map(|(call_index, call)| template_tool_call(index, call_index, call))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &message.tool_call_id {
        out.insert("tool_call_id".into(), Value::String(id.clone()));
    }
    Ok(Value::Object(out))
}

/// A message's content as one string: a string as is, text parts joined with newlines;
/// `None` for null or absent content.
fn content_text(index: usize, content: &Value) -> Result<Option<String>, ApiError> {
    match content {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (part_index, part) in parts.iter().enumerate() {
                let param = format!("messages[{index}].content[{part_index}]");
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                if kind != "text" {
                    return Err(ApiError::invalid(
                        param,
                        format!(
                            "content parts of type {kind:?} are not supported: this model \
                             reads text only (use {{\"type\": \"text\", \"text\": ...}})"
                        ),
                    ));
                }
                let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(param, "a text content part needs a string `text`")
                })?;
                texts.push(text);
            }
            Ok(Some(texts.join("\n")))
        }
        _ => Err(ApiError::invalid(
            format!("messages[{index}].content"),
            "`content` must be a string or an array of content parts",
        )),
    }
}

fn template_tool_call(
    index: usize,
    call_index: usize,
    call: &ToolCallIn,
) -> Result<Value, ApiError> {
    let param = format!("messages[{index}].tool_calls[{call_index}].function.arguments");
    let arguments = match &call.function.arguments {
        Value::String(text) if text.trim().is_empty() => Value::Object(Map::new()),
        Value::String(text) => serde_json::from_str::<Value>(text).map_err(|error| {
            ApiError::invalid(
                param.clone(),
                format!("tool call arguments must be a JSON object encoded as a string: {error}"),
            )
        })?,
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    };
    if !arguments.is_object() {
        return Err(ApiError::invalid(
            param,
            "tool call arguments must be a JSON object",
        ));
    }
    let mut out = json!({
        "type": call.kind.clone().unwrap_or_else(|| "function".into()),
        "function": {"name": call.function.name, "arguments": arguments},
    });
    if let (Some(id), Some(object)) = (&call.id, out.as_object_mut()) {
        object.insert("id".into(), Value::String(id.clone()));
    }
    Ok(out)
}

/// Validates `tools`, `tool_choice` and `response_format`.
pub fn tool_setup(
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
    response_format: Option<&Value>,
) -> Result<ToolSetup, ApiError> {
    check_response_format(response_format)?;
    let tools: Option<Vec<Value>> = match tools {
        None => None,
        Some([]) => None,
        Some(list) => {
            for (index, tool) in list.iter().enumerate() {
                let is_function = tool.get("type").and_then(Value::as_str) == Some("function");
                let has_name = tool
                    .get("function")
                    .and_then(|function| function.get("name"))
                    .and_then(Value::as_str)
                    .is_some_and(|name| !name.is_empty());
                if !is_function || !has_name {
                    return Err(ApiError::invalid(
                        format!("tools[{index}]"),
                        "each tool must be {\"type\": \"function\", \"function\": {\"name\": ..., \
                         \"parameters\": {...}}}",
                    ));
                }
            }
            Some(list.to_vec())
        }
    };
    let parse_calls = match tool_choice {
        None | Some(Value::Null) => tools.is_some(),
        Some(Value::String(choice)) if choice == "auto" => tools.is_some(),
        Some(Value::String(choice)) if choice == "none" => false,
        Some(Value::String(choice)) if choice == "required" => {
            return Err(unsupported_tool_choice("\"required\""))
        }
        Some(Value::Object(_)) => return Err(unsupported_tool_choice("a named function")),
        Some(other) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("`tool_choice` must be \"auto\" or \"none\", got {other}"),
            ))
        }
    };
    Ok(ToolSetup { tools, parse_calls })
}

fn unsupported_tool_choice(what: &str) -> ApiError {
    ApiError::invalid(
        "tool_choice",
        format!(
            "`tool_choice` {what} is not supported (it needs constrained decoding); use \"auto\" \
             or \"none\""
        ),
    )
}

fn check_response_format(format: Option<&Value>) -> Result<(), ApiError> {
    let Some(format) = format else {
        return Ok(());
    };
    if format.is_null() {
        return Ok(());
    }
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(()),
        Some(kind @ ("json_object" | "json_schema")) => Err(ApiError::invalid(
            "response_format",
            format!(
                "`response_format` {kind:?} is not supported (it needs constrained decoding); \
                 only {{\"type\": \"text\"}} is"
            ),
        )),
        _ => Err(ApiError::invalid(
            "response_format",
            "`response_format` must be {\"type\": \"text\"}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(json: Value) -> Vec<ChatMessageIn> {
        serde_json::from_value(json).expect("messages")
    }

    #[test]
    fn joins_text_parts_and_parses_arguments() {
        let converted = template_messages(&messages(json!([
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}
        ])))
        .expect("valid");
        assert_eq!(converted[0]["content"], "a\nb");
        assert_eq!(
            converted[1]["tool_calls"][0]["function"]["arguments"],
            json!({"x": 1})
        );
        assert_eq!(converted[2]["tool_call_id"], "call_1");
    }

    #[test]
    fn rejects_images_and_bad_arguments() {
        let error = template_messages(&messages(json!([
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ])))
        .expect_err("image");
        assert_eq!(error.param.as_deref(), Some("messages[0].content[0]"));
        let error = template_messages(&messages(json!([
            {"role": "assistant", "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
        ])))
        .expect_err("bad arguments");
        assert_eq!(
            error.param.as_deref(),
            Some("messages[0].tool_calls[0].function.arguments")
        );
    }

    #[test]
    fn tool_choice_rules() {
        let tools = [json!({"type": "function", "function": {"name": "f"}})];
        assert!(
            tool_setup(Some(&tools), None, None)
                .expect("auto")
                .parse_calls
        );
        assert!(
            !tool_setup(Some(&tools), Some(&json!("none")), None)
                .expect("none")
                .parse_calls
        );
        assert!(tool_setup(Some(&tools), Some(&json!("required")), None).is_err());
        assert!(tool_setup(None, None, Some(&json!({"type": "json_object"}))).is_err());
        assert!(tool_setup(None, None, Some(&json!({"type": "text"}))).is_ok());
    }
}
