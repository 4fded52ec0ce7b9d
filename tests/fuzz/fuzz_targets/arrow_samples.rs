#![no_main]

libfuzzer_sys::fuzz_target!(
    // libfuzzer-sys aborts on every panic, even one the decoder catches. The decoder
    // catches arrow-ipc's (a bad message is dead-lettered, not fatal); a panic that
    // escapes it still aborts, as libfuzzer-sys also aborts on any panic it catches.
    init: std::panic::set_hook(Box::new(|_| {})),
    |data: &[u8]| tally_fuzz::checks::arrow_samples(data)
);
