pub mod aggregation;
pub mod bootstrap;
