//! The small endpoints: `/v1/models`, `/health`, `/metrics`, `/tokenize`, `/detokenize`.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::chat_messages::template_messages;
use super::error::{ApiError, OpenAiJson};
use super::jobs::run_blocking;
use super::request::{DetokenizeRequest, TokenizeRequest};
use super::AppState;

fn model_json(state: &AppState) -> Value {
    json!({
        "id": &*state.model_id,
        "object": "model",
        "created": state.started_at,
        "owned_by": "qwen2-burn",
        "max_model_len": state.engine.context_length(),
    })
}

/// `GET /v1/models`: the one model served.
pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_json(&state)]}))
}

/// `GET /v1/models/{model}`: the model, or 404.
pub async fn get_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if *model == *state.model_id {
        Ok(Json(model_json(&state)))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model {model:?} does not exist; this server serves {:?}",
                &*state.model_id
            ),
        )
        .with_param("model")
        .with_code("model_not_found"))
    }
}

/// `GET /health`: 200 when the engine is ready, 503 while it loads.
pub async fn health(State(state): State<AppState>) -> Response {
    if state.engine.ready() {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.engine.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `POST /tokenize`: a prompt as is, or messages rendered with the chat template.
pub async fn tokenize(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine.clone();
    let context_length = engine.context_length();
    let text = match (request.prompt, request.messages) {
        (Some(prompt), None) => prompt,
        (None, Some(messages)) => {
            let messages = template_messages(&messages)?;
            let tools = request.tools.filter(|tools| !tools.is_empty());
            engine
                .render_chat(&messages, tools.as_deref())
                .map_err(|error| {
                    ApiError::invalid("messages", format!("the chat template failed: {error}"))
                })?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `prompt` (a string) or `messages`",
            ))
        }
    };
    let tokens = run_blocking(move || {
        engine
            .tokenize(&text)
            .map_err(|error| ApiError::internal(format!("tokenization failed: {error}")))
    })
    .await?;
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": context_length,
        "tokens": tokens,
    })))
}

/// `POST /detokenize`: ids → text (special tokens kept, so it round-trips).
pub async fn detokenize(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let text = state
        .engine
        .detokenize(&request.tokens, false)
        .map_err(|error| ApiError::invalid("tokens", format!("cannot detokenize: {error}")))?;
    Ok(Json(json!({"prompt": text})))
}
