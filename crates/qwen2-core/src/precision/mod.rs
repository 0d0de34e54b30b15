//! Precision plans: which dtype holds each role of the graph, the named policies, and the
//! hardware-keyed tables that resolve `auto`.

mod hardware;
mod plan;
mod table;
mod train;

pub use hardware::{DeviceKind, Hardware};
pub use plan::{Policy, PrecisionPlan};
pub use table::{can_run, Choice, ModelFacts, PolicyTable, Resolved, Rule};
pub use train::{ResolvedTraining, TrainPolicy, TrainingRule};
