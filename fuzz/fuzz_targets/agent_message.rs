#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| taba_fuzz::agent_message(data));
