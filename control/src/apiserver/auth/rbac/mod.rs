pub mod bootstrap;
pub mod aggregation;
