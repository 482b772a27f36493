#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| taba_fuzz::job_spec(data));
