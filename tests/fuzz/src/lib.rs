//! The fuzz targets' checks, in [`checks`] (shared with the stable regression test).

pub mod checks;
