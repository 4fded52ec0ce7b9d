//! Integration tests: one binary, one module per area.

mod broker_pipeline;
mod demo;
