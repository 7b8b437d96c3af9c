//! Test-only plugin: the probe term of `lsd_plugin_testing`, which reads
//! every input of the batch and can be told to fail or panic. The plugin
//! host tests load it and compare it with the same term run in-process.

lsd_plugin_api::export_plugin!(lsd_plugin_testing::ProbeTerm);
