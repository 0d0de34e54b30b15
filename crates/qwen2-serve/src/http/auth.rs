//! API keys: `Authorization: Bearer KEY` or `x-api-key: KEY`, compared in constant time.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use super::error::ApiError;
use super::AppState;

/// Routes that never need a key.
const PUBLIC_PATHS: [&str; 1] = ["/health"];

/// Middleware: rejects requests without a valid key (when keys are configured).
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.api_keys.is_empty() || PUBLIC_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match presented_key(request.headers()) {
        None => ApiError::unauthorized(
            "missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
        )
        .into_response(),
        Some(key) if matches_any(key.as_bytes(), &state.api_keys) => next.run(request).await,
        Some(_) => ApiError::unauthorized("invalid API key").into_response(),
    }
}

fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            return Some(token.trim().to_string());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// Whether `presented` equals one of `keys`; every key is compared in full, whatever matches.
pub fn matches_any(presented: &[u8], keys: &[String]) -> bool {
    let mut found = Choice::from(0);
    for key in keys {
        found |= equal_padded(presented, key.as_bytes());
    }
    found.into()
}

/// Constant-time equality that also runs in full when the lengths differ (time depends only
/// on the longer length).
fn equal_padded(a: &[u8], b: &[u8]) -> Choice {
    let length = a.len().max(b.len());
    let mut equal = (a.len() as u64).ct_eq(&(b.len() as u64));
    for i in 0..length {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        equal &= x.ct_eq(&y);
    }
    equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_keys() {
        let keys = vec!["alpha".to_string(), "beta-key".to_string()];
        assert!(matches_any(b"alpha", &keys));
        assert!(matches_any(b"beta-key", &keys));
        assert!(!matches_any(b"alph", &keys));
        assert!(!matches_any(b"alpha\0", &keys));
        assert!(!matches_any(b"", &keys));
    }
}
