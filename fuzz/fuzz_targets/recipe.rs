//! `lsd_core::fuzzing::recipe` under libFuzzer (see ../README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lsd_core::fuzzing::recipe(data);
});
