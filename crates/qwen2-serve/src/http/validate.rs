//! Checks the sampling and length fields shared by both completion endpoints and turns them
//! into what [`Job`](crate::engine_api::Job) needs.

use serde_json::Value;

use super::error::ApiError;
use super::request::SamplingFields;
use crate::engine_api::SamplingSettings;

/// Most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 16;
/// Most choices (`n`) a request may ask for.
pub const MAX_CHOICES: usize = 8;
/// Most alternatives per token in chat logprobs.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Validated generation settings of one request (every choice shares them, but the seed).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Sampling for choice 0 (choice `i` uses `seed + i`).
    pub sampling: SamplingSettings,
    /// Tokens to generate at most.
    pub max_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Choices.
    pub n: usize,
    /// Stream the answer.
    pub stream: bool,
    /// Send a usage chunk at the end of the stream.
    pub include_usage: bool,
}

impl GenerationParams {
    /// The sampling of choice `index`: seeds differ per choice so choices differ.
    pub fn sampling_for_choice(&self, index: usize) -> SamplingSettings {
        let mut sampling = self.sampling.clone();
        sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(index as u64));
        sampling
    }
}

/// Validates the shared fields.
pub fn validate_sampling(fields: &SamplingFields) -> Result<GenerationParams, ApiError> {
    let temperature = check_range(fields.temperature, "temperature", 0.0, 2.0)?;
    let top_p = match fields.top_p {
        Some(value) if !(value > 0.0 && value <= 1.0) => {
            return Err(ApiError::invalid(
                "top_p",
                format!("`top_p` must be in (0, 1], got {value}"),
            ))
        }
        other => other,
    };
    let top_k = match fields.top_k {
        None => None,
        Some(-1) | Some(0) => Some(0),
        Some(value) if value > 0 => Some(value as usize),
        Some(value) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be ≥ 0 (or -1 for off), got {value}"),
            ))
        }
    };
    let min_p = check_range(fields.min_p, "min_p", 0.0, 1.0)?;
    let repetition_penalty = match fields.repetition_penalty {
        Some(value) if !(value > 0.0 && value.is_finite()) => {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("`repetition_penalty` must be > 0, got {value}"),
            ))
        }
        other => other,
    };
    let frequency_penalty =
        check_range(fields.frequency_penalty, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    let presence_penalty =
        check_range(fields.presence_penalty, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    let logit_bias = parse_logit_bias(fields.logit_bias.as_ref())?;
    let max_tokens = parse_max_tokens(fields)?;
    let stop = parse_stop(fields.stop.as_ref())?;
    let n = match fields.n {
        None => 1,
        Some(value) if (1..=MAX_CHOICES as i64).contains(&value) => value as usize,
        Some(value) => {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_CHOICES}, got {value}"),
            ))
        }
    };
    let stream = fields.stream.unwrap_or(false);
    let include_usage = match &fields.stream_options {
        Some(_) if !stream => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true",
            ))
        }
        Some(options) => options.include_usage.unwrap_or(false),
        None => false,
    };
    Ok(GenerationParams {
        sampling: SamplingSettings {
            temperature: temperature.map(|value| value as f32),
            top_k,
            top_p: top_p.map(|value| value as f32),
            min_p: min_p.map(|value| value as f32),
            repetition_penalty: repetition_penalty.map(|value| value as f32),
            frequency_penalty: frequency_penalty as f32,
            presence_penalty: presence_penalty as f32,
            seed: fields.seed.map(|seed| seed as u64),
            logit_bias,
        },
        max_tokens,
        stop,
        n,
        stream,
        include_usage,
    })
}

fn check_range(
    value: Option<f64>,
    name: &str,
    low: f64,
    high: f64,
) -> Result<Option<f64>, ApiError> {
    match value {
        Some(v) if !(low..=high).contains(&v) => Err(ApiError::invalid(
            name,
            format!("`{name}` must be between {low} and {high}, got {v}"),
        )),
        other => Ok(other),
    }
}

fn parse_max_tokens(fields: &SamplingFields) -> Result<Option<usize>, ApiError> {
    let (value, name) = match (fields.max_completion_tokens, fields.max_tokens) {
        (Some(value), _) => (value, "max_completion_tokens"),
        (None, Some(value)) => (value, "max_tokens"),
        (None, None) => return Ok(None),
    };
    if value < 1 {
        return Err(ApiError::invalid(
            name,
            format!("`{name}` must be at least 1, got {value}"),
        ));
    }
    Ok(Some(usize::try_from(value).unwrap_or(usize::MAX)))
}

fn parse_stop(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let strings: Vec<String> = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(text) => Ok(text.clone()),
                _ => Err(ApiError::invalid(
                    format!("stop[{i}]"),
                    "`stop` must be a string or a list of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or a list of strings",
            ))
        }
    };
    if strings.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "at most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
                strings.len()
            ),
        ));
    }
    if strings.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    Ok(strings)
}

fn parse_logit_bias(
    bias: Option<&serde_json::Map<String, Value>>,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(bias) = bias else {
        return Ok(Vec::new());
    };
    let mut parsed = Vec::with_capacity(bias.len());
    for (key, value) in bias {
        let id: u32 = key.trim().parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` keys must be token ids, got {key:?}"),
            )
        })?;
        let amount = value.as_f64().ok_or_else(|| {
            ApiError::invalid(
                "logit_bias",
                format!("`logit_bias[{key}]` must be a number"),
            )
        })?;
        if !(-100.0..=100.0).contains(&amount) {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("`logit_bias[{key}]` must be between -100 and 100, got {amount}"),
            ));
        }
        parsed.push((id, amount as f32));
    }
    Ok(parsed)
}

/// Checks that the prompt and the requested length fit the model's context; `prompt_param`
/// names the prompt's field (`messages` or `prompt`).
pub fn check_context(
    prompt_tokens: usize,
    max_tokens: Option<usize>,
    context_length: usize,
    prompt_param: &str,
) -> Result<(), ApiError> {
    if prompt_tokens == 0 {
        return Err(ApiError::invalid(prompt_param, "the prompt is empty"));
    }
    let wanted = max_tokens.unwrap_or(1);
    if prompt_tokens.saturating_add(wanted) > context_length {
        let param = if max_tokens.is_some() && prompt_tokens < context_length {
            "max_tokens"
        } else {
            prompt_param
        };
        return Err(ApiError::invalid(
            param,
            format!(
                "this model's maximum context length is {context_length} tokens, but the \
                 request has {prompt_tokens} prompt tokens and asks for {wanted} completion \
                 tokens ({} in all); shorten the prompt or lower max_tokens",
                prompt_tokens.saturating_add(wanted)
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: serde_json::Value) -> SamplingFields {
        serde_json::from_value(json).expect("fields")
    }

    #[test]
    fn defaults_are_empty() {
        let params = validate_sampling(&fields(serde_json::json!({}))).expect("valid");
        assert_eq!(params.n, 1);
        assert_eq!(params.max_tokens, None);
        assert!(params.stop.is_empty());
        assert_eq!(params.sampling, SamplingSettings::default());
    }

    #[test]
    fn max_completion_tokens_wins() {
        let params = validate_sampling(&fields(
            serde_json::json!({"max_tokens": 50, "max_completion_tokens": 7}),
        ))
        .expect("valid");
        assert_eq!(params.max_tokens, Some(7));
    }

    #[test]
    fn rejects_out_of_range_values_naming_the_field() {
        for (body, param) in [
            (serde_json::json!({"temperature": 2.5}), "temperature"),
            (serde_json::json!({"top_p": 0}), "top_p"),
            (
                serde_json::json!({"presence_penalty": -3}),
                "presence_penalty",
            ),
            (serde_json::json!({"n": 9}), "n"),
            (serde_json::json!({"stop": ["a", ""]}), "stop"),
            (serde_json::json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (serde_json::json!({"logit_bias": {"5": 101}}), "logit_bias"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (
                serde_json::json!({"stream_options": {"include_usage": true}}),
                "stream_options",
            ),
        ] {
            let error = validate_sampling(&fields(body.clone())).expect_err("invalid");
            assert_eq!(error.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn choice_seeds_differ() {
        let params =
            validate_sampling(&fields(serde_json::json!({"seed": 3, "n": 2}))).expect("valid");
        assert_eq!(params.sampling_for_choice(1).seed, Some(4));
    }

    #[test]
    fn context_overflow_names_the_numbers() {
        let error = check_context(10, Some(8), 16, "prompt").expect_err("too long");
        assert!(error.message.contains("16"), "{}", error.message);
        assert!(check_context(10, Some(6), 16, "prompt").is_ok());
    }
}
