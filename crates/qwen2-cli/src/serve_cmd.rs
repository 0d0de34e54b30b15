//! `qwen2 serve`: the OpenAI-compatible server on one model.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use qwen2_burn::core::engine::TextAssets;
use qwen2_burn::core::Platform;
use qwen2_serve::http::{serve_listener, ServerConfig};
use qwen2_serve::scheduler::{EngineOptions, ModelEngine};

use crate::args::ModelArgs;
use crate::model_setup::{loader, CliResult};

/// `qwen2 serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Address to listen on (use 0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Requests decoded together at most (continuous batching).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_seqs: usize,

    /// Requests waiting beyond the running ones at most; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_queue: usize,

    /// Prompt + completion tokens allowed per request [default: the model's context, or
    /// --ctx-size].
    #[arg(long, value_name = "N")]
    pub max_model_len: Option<usize>,

    /// Prompt tokens prefilled per scheduler tick: smaller keeps running streams smoother
    /// while a long prompt is read, larger prefills it faster.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub prefill_chunk: usize,

    /// Require this API key (`Authorization: Bearer KEY` or `x-api-key: KEY`) on every route
    /// but /health; may be repeated.
    #[arg(long, value_name = "KEY")]
    pub api_key: Vec<String>,

    /// Read API keys from a file, one per line.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Allow browsers on this origin (CORS); may be repeated; `*` allows any.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,

    /// Seconds running requests may go on after SIGINT/SIGTERM before they are cut.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub shutdown_grace: u64,
}

/// The API keys of `--api-key` and `--api-key-file`.
fn api_keys(a: &ServeArgs) -> CliResult<Vec<String>> {
    let mut keys = a.api_key.clone();
    if let Some(path) = &a.api_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
        if keys.is_empty() {
            return Err(format!("--api-key-file {}: no key in the file", path.display()).into());
        }
    }
    if keys.iter().any(|k| k.is_empty()) {
        return Err("--api-key: an empty key would accept anyone".into());
    }
    Ok(keys)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("qwen2 serve: shutting down (finishing running requests)");
}

pub fn serve_cmd<P: Platform + 'static>(a: ServeArgs) -> CliResult {
    if a.max_seqs == 0 {
        return Err("--max-seqs must be at least 1".into());
    }
    let keys = api_keys(&a)?;
    let loader = loader::<P>(&a.model)?;
    let plan = loader.resolved().policy;
    let assets = TextAssets::from_model_dir(&a.model.model)
        .map_err(|e| format!("qwen2 serve needs the model's tokenizer and template: {e}"))?;
    let engine = ModelEngine::start(
        loader,
        assets,
        EngineOptions {
            max_seqs: a.max_seqs,
            max_queue: a.max_queue,
            max_model_len: a.max_model_len,
            prefill_chunk: a.prefill_chunk,
            idle_caches: a.max_seqs,
        },
    )?;
    let config = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        api_keys: keys,
        cors_origins: a.cors_origin.clone(),
        shutdown_grace: Duration::from_secs(a.shutdown_grace),
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", a.host, a.port))?;
        let address = listener.local_addr()?;
        eprintln!(
            "qwen2 serve: listening on http://{address} (model {}, {} backend, {plan} plan, up to {} \
             sequences at once); loading the model, /health answers 503 until it is ready",
            a.model.model.display(),
            P::NAME,
            a.max_seqs
        );
        // A model that fails to load ends the server with its error.
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        let waiting = engine.clone();
        tokio::task::spawn_blocking(move || match waiting.wait_ready() {
            Ok(()) => eprintln!("qwen2 serve: model loaded, ready"),
            Err(e) => {
                let _ = failed_tx.send(e);
            }
        });
        let failure = Arc::new(std::sync::Mutex::new(None::<String>));
        let seen = failure.clone();
        let shutdown = async move {
            tokio::select! {
                _ = shutdown_signal() => {},
                Ok(e) = failed_rx => {
                    if let Ok(mut f) = seen.lock() {
                        *f = Some(e);
                    }
                }
            }
        };
        serve_listener(listener, engine, config, shutdown)
            .await
            .map_err(|e| e.to_string())?;
        match failure.lock().ok().and_then(|f| f.clone()) {
            Some(e) => Err(format!("the model could not be loaded: {e}").into()),
            None => Ok(()),
        }
    })
}
