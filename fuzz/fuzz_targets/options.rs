//! kubelet's options JSON → VolumeSpec: any text must give Ok or a one-line KV_OPTIONS error
//! that never quotes a secretRef value.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match keyvault_flexvolume::options::VolumeSpec::parse(text) {
        Ok(spec) => {
            // Every file name stays one safe name inside the volume.
            for o in &spec.objects {
                assert!(!o.file.is_empty() && !o.file.contains('/') && o.file != "." && !o.file.contains(".."));
                for f in &o.json_fields {
                    assert!(!f.file.is_empty() && !f.file.contains('/') && f.file != "." && !f.file.contains(".."));
                }
            }
        }
        Err(e) => {
            assert!(!e.message().contains('\n'));
            assert!(e.to_string().starts_with("KV_"));
        }
    }
});
