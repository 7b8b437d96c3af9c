//! `lsd_core::fuzzing::declaration` under libFuzzer (see ../README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lsd_core::fuzzing::declaration(data);
});
