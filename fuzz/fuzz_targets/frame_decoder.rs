#![no_main]
// Arbitrary bytes into the frame decoder: never a panic, never unbounded memory.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_proto::frame::fuzz_decode(data));
