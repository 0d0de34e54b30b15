//! OpenAI-shaped errors: every failure the server answers with is
//! `{"error": {"message", "type", "param", "code"}}`, including axum's own rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::engine_api::SubmitError;

/// An error answered to a client in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable explanation.
    pub message: String,
    /// OpenAI's error `type` (`invalid_request_error`, `authentication_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, when known (`messages[0].content`).
    pub param: Option<String>,
    /// A machine-readable code, when there is one.
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (busy server).
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    /// An error of the given status and type, no param, no code.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    /// 400 `invalid_request_error` about the field `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_param(param)
    }

    /// 400 `invalid_request_error` not tied to one field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 500 `server_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 401 `authentication_error`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
            .with_code("invalid_api_key")
    }

    /// Names the offending field.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The `{"error": {...}}` body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match &error {
            SubmitError::QueueFull { .. } => {
                let mut api = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    error.to_string(),
                )
                .with_code("queue_full");
                api.retry_after_secs = Some(1);
                api
            }
            SubmitError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                error.to_string(),
            )
            .with_code("shutting_down"),
            SubmitError::Invalid(message) => ApiError::bad_request(message.clone()),
        }
    }
}

/// A JSON request body whose every rejection (wrong content type, too large, malformed JSON,
/// wrong shape) is an [`ApiError`]; shape errors name the field at fault in `param`.
#[derive(Debug, Clone)]
pub struct OpenAiJson<T>(pub T);

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(&request) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "expected a request body with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    payload_too_large()
                } else {
                    ApiError::bad_request(format!(
                        "could not read the request body: {}",
                        rejection.body_text()
                    ))
                }
            })?;
        parse_json_body(&bytes).map(OpenAiJson)
    }
}

/// Parses a JSON body into `T`, reporting syntax errors and the path of shape errors.
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the request body is not valid JSON: {inner}"))
        } else {
            shape_error(&path, &inner)
        }
    })?;
    deserializer.end().map_err(|error| {
        ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
    })?;
    Ok(value)
}

/// Reads `T` out of an already parsed body, naming the path of a shape error.
pub fn from_body<T: DeserializeOwned>(body: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(body).map_err(|error| {
        let path = error.path().to_string();
        shape_error(&path, error.inner())
    })
}

fn shape_error(path: &str, error: &serde_json::Error) -> ApiError {
    if path.is_empty() || path == "." {
        ApiError::bad_request(format!("invalid request body: {error}"))
    } else {
        ApiError::invalid(path, format!("invalid `{path}`: {error}"))
    }
}

fn has_json_content_type(request: &Request) -> bool {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// 413 in OpenAI's shape.
pub fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "the request body is larger than the server accepts (--max-body-bytes)",
    )
}

/// Fallback for unknown routes: 404.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("unknown route: {}", uri.path()),
    )
    .with_code("not_found")
}

/// Fallback for a known route called with the wrong method: 405.
pub async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!(
            "method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .with_code("method_not_allowed")
}

/// Safety net: any error response that is not JSON (a layer's own rejection) is rewritten in
/// OpenAI's shape, keeping its status and headers.
pub async fn ensure_json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let api = match status {
        StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
        _ => ApiError::new(
            status,
            if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            },
            status.canonical_reason().unwrap_or("request failed"),
        ),
    };
    let rebuilt = api.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, rebuilt.into_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{ChatCompletionRequest, SamplingFields};

    #[test]
    fn shape_errors_name_the_field() {
        let body: serde_json::Value = parse_json_body(
            br#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
        )
        .expect("valid JSON");
        let error = from_body::<SamplingFields>(&body).expect_err("wrong type");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.param.as_deref(), Some("temperature"));
        let error =
            parse_json_body::<ChatCompletionRequest>(br#"{"messages": [{"content": "x"}]}"#)
                .expect_err("missing role");
        assert_eq!(error.param.as_deref(), Some("messages[0]"));
        let error =
            parse_json_body::<serde_json::Value>(br#"{"messages": [}"#).expect_err("syntax");
        assert!(
            error.message.contains("not valid JSON"),
            "{}",
            error.message
        );
        assert!(parse_json_body::<serde_json::Value>(b"{} x").is_err());
    }
}
