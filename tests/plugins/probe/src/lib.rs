//! Test-only plugin: the probe term of `lsd_core::plugin::testing`, which
//! reads every input of the batch and can be told to fail or panic. The
//! lsd-core plugin tests load it and compare it with the same term run
//! in-process.

lsd_core::export_plugin!(lsd_core::plugin::testing::ProbeTerm);
