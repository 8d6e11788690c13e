#![no_main]
// Arbitrary user paths through the virtual path parser: never a panic, never `..` kept.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_server::vfs::fuzz_virtual_path(data));
