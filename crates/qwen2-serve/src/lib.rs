//! `qwen2 serve`: an OpenAI-compatible HTTP server (axum) in front of an engine whose one
//! scheduler thread owns the model and decodes every running request in one batched step.

pub mod engine_api;
pub mod http;
pub mod scheduler;
