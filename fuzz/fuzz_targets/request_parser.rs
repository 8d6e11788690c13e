#![no_main]
// Arbitrary header bytes through the JSON header parser and the typed request layer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_proto::msg::fuzz_parse_request(data));
