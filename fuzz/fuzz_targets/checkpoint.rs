//! `lsd_core::fuzzing::checkpoint` under libFuzzer (see ../README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lsd_core::fuzzing::checkpoint(data);
});
