//! The OpenAI-compatible HTTP layer (axum): routes, auth, CORS, limits, metrics, shutdown.
//!
//! Everything here talks to the model through [`Engine`] only. Errors are always OpenAI's
//! `{"error": {...}}` object; see [`error`].

pub mod auth;
pub mod chat;
pub mod chat_messages;
pub mod completions;
pub mod error;
pub mod info;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod request;
pub mod tool_calls;
pub mod validate;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{from_fn_with_state, map_response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::engine_api::Engine;
use metrics::Metrics;

/// How the server listens and behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address to bind (default `127.0.0.1`).
    pub host: String,
    /// Port (default 8080; 0 picks a free one).
    pub port: u16,
    /// Accepted API keys; empty: no authentication.
    pub api_keys: Vec<String>,
    /// Origins allowed by CORS (`"*"` for any); empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted (default 8 MiB; larger → 413).
    pub max_body_bytes: usize,
    /// Interval of `: keep-alive` comments on idle streams (default 10 s).
    pub keep_alive: Duration,
    /// How long running jobs may go on after shutdown is asked for (default 10 s).
    pub shutdown_grace: Duration,
    /// The model id to report instead of [`Engine::model_id`].
    pub model_id: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            max_body_bytes: 8 * 1024 * 1024,
            keep_alive: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            model_id: None,
        }
    }
}

/// Why [`serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// `host:port`.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The model side.
    pub engine: Arc<dyn Engine>,
    /// This server's counters.
    pub metrics: Arc<Metrics>,
    /// The model id in responses.
    pub model_id: Arc<str>,
    /// Unix seconds when the router was built (`created` of the model).
    pub started_at: u64,
    /// Keep-alive comment interval for streams.
    pub keep_alive: Duration,
    /// Accepted API keys (empty: no auth).
    pub api_keys: Arc<[String]>,
}

/// The application: every route with auth, CORS, the body limit and metrics.
pub fn router(engine: Arc<dyn Engine>, config: &ServerConfig) -> Router {
    let model_id: Arc<str> = match &config.model_id {
        Some(id) => id.as_str().into(),
        None => engine.model_id().into(),
    };
    let state = AppState {
        engine,
        metrics: Arc::new(Metrics::new()),
        model_id,
        started_at: jobs::unix_now(),
        keep_alive: config.keep_alive,
        api_keys: config
            .api_keys
            .iter()
            .filter(|key| !key.is_empty())
            .cloned()
            .collect(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(info::list_models))
        .route("/v1/models/{model}", get(info::get_model))
        .route("/health", get(info::health))
        .route("/metrics", get(info::metrics))
        .route("/tokenize", post(info::tokenize))
        .route("/detokenize", post(info::detokenize))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(from_fn_with_state(state.clone(), auth::require_api_key))
        .layer(map_response(error::ensure_json_errors))
        .layer(from_fn_with_state(state.clone(), logging::observe_requests))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state);
    match cors_layer(&config.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .filter_map(|origin| match HeaderValue::from_str(origin) {
                Ok(value) => Some(value),
                Err(_) => {
                    tracing::warn!(origin, "ignoring a CORS origin that is not a valid header");
                    None
                }
            })
            .collect::<Vec<_>>();
        AllowOrigin::list(values)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
            ])
            .max_age(Duration::from_secs(3600)),
    )
}

/// Binds `config.host:config.port` and serves until `shutdown` completes; see
/// [`serve_listener`].
pub async fn serve(
    engine: Arc<dyn Engine>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let address = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|source| ServeError::Bind { address, source })?;
    serve_listener(listener, engine, config, shutdown).await
}

/// Serves on a bound listener until `shutdown` completes, then stops accepting connections,
/// asks the engine to stop (running jobs get `config.shutdown_grace`), lets in-flight
/// responses end (waiting at most the grace plus 5 s) and returns.
pub async fn serve_listener(
    listener: TcpListener,
    engine: Arc<dyn Engine>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, model = engine.model_id(), "serving the OpenAI-compatible API");
    }
    let app = router(engine.clone(), &config);
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    };
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(graceful)
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            // The server stopped by itself (an accept loop error): stop the engine as well.
            let stopping = engine.clone();
            let grace = config.shutdown_grace;
            let _ = tokio::task::spawn_blocking(move || stopping.shutdown(grace)).await;
            return result.map_err(ServeError::from);
        }
        _ = signalled_rx => {}
    }
    tracing::info!(
        grace_secs = config.shutdown_grace.as_secs_f64(),
        "shutting down: no new connections, running requests end within the grace period"
    );
    let grace = config.shutdown_grace;
    let stopping = engine.clone();
    let engine_stopped = tokio::task::spawn_blocking(move || stopping.shutdown(grace));
    match tokio::time::timeout(grace + Duration::from_secs(5), &mut server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("connections still open after the grace period; closing them"),
    }
    if let Err(error) = engine_stopped.await {
        tracing::warn!(%error, "the engine's shutdown task failed");
    }
    tracing::info!("server stopped");
    Ok(())
}
