//! Integration tests: one binary, one module per area.

mod aggregator_bad_input;
mod aggregator_crash;
mod aggregator_groups;
mod ballista;
mod broker_pipeline;
mod collector;
mod demo;
mod fuzz_corpus;
mod object_store;
mod sasl;
mod signed;
mod sql;
mod tls;
mod watch;
