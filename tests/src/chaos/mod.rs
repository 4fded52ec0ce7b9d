//! The chaos runner: the real pipeline — collector agents (`tally collect`) sampling or
//! `tally simulate` producing, Tansu with SQLite storage brokering, `tally aggregate`
//! rolling up, `tally rate` invoicing — run as processes while faults hit them; at the end the lake and the invoices are checked
//! against the generator's exact truth. `tests/chaos` runs it; RELIABILITY.md lists the
//! scenarios with the figures of their last run.
//!
//! [`pipeline`] starts and stops the processes, [`scenarios`] injects each scenario's
//! faults (network faults through [`proxy`]; the scenarios fed by collector agents are in
//! `collected`), [`verdict`] compares the outcome with the truth.

mod collected;
pub mod pipeline;
pub mod proxy;
pub mod scenarios;
pub mod verdict;

pub use scenarios::{Scenario, Size};
pub use verdict::Figures;
