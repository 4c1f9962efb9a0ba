//! The SQL gate lives in its own crate (`queries/gate`, only the SQL parser as a dependency) so
//! that its fuzz target builds without DataFusion; see [`vendflow_sqlgate`].

pub use vendflow_sqlgate::*;
