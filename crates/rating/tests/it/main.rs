//! The rating crate's integration tests: one binary, a module per area.

mod bookings;
mod budgets;
mod compare;
mod corrections;
mod lake;
mod notices;
mod outputs;
mod properties;
mod rules;
mod splits;
