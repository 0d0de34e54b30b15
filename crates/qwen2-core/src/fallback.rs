//! Falling back to a safer precision plan instead of emitting garbage.

use crate::error::{Error, Result};
use crate::precision::{Policy, Resolved};

/// A policy that was tried and produced non-finite values.
#[derive(Debug)]
pub struct FailedAttempt {
    /// The policy.
    pub policy: Policy,
    /// What went wrong (an [`Error::NonFinite`] or [`Error::NonFiniteLogits`]).
    pub error: Error,
}

/// The result of [`run_with_fallback`].
#[derive(Debug)]
pub struct Outcome<T> {
    /// What the successful run returned.
    pub value: T,
    /// The policy that produced it.
    pub policy: Policy,
    /// Policies tried before it, in order.
    pub failed: Vec<FailedAttempt>,
}

/// Whether an error means "this plan overflowed" (as opposed to bad input or I/O).
pub fn is_nonfinite(e: &Error) -> bool {
    matches!(e, Error::NonFinite(_) | Error::NonFiniteLogits { .. })
}

/// Runs `run` with `resolved.policy`; when it fails with a non-finite error and `fallback` is
/// on, runs it again with each of `resolved.fallbacks` in turn. Other errors return at once.
pub fn run_with_fallback<T>(
    resolved: &Resolved,
    fallback: bool,
    mut run: impl FnMut(Policy) -> Result<T>,
) -> Result<Outcome<T>> {
    let mut failed = Vec::new();
    let chain = std::iter::once(resolved.policy).chain(resolved.fallbacks.iter().copied());
    for policy in chain {
        match run(policy) {
            Ok(value) => {
                return Ok(Outcome {
                    value,
                    policy,
                    failed,
                })
            }
            Err(e) if fallback && is_nonfinite(&e) => {
                tracing::warn!(%policy, error = %e, "non-finite values; falling back to a safer plan");
                failed.push(FailedAttempt { policy, error: e });
            }
            Err(e) => return Err(e),
        }
    }
    Err(failed
        .pop()
        .map(|a| a.error)
        .unwrap_or_else(|| Error::Invalid("no policy left to fall back to".into())))
}
