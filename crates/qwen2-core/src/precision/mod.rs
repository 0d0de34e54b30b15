//! Precision plans: which dtype holds each role of the graph, and the named policies.

mod plan;

pub use plan::{Policy, PrecisionPlan};
