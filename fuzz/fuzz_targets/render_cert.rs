//! A certificate's `cer` (DER) → PEM / DER.
#![no_main]
use keyvault_flexvolume::render::{render_cert, Format, RenderOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [None, Some(Format::Der)] {
        let _ = render_cert("obj", data, &RenderOptions { format, ..Default::default() });
    }
});
