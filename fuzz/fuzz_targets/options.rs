//! Option parsing: `json:` filenames and keyval strings (`-drive`, `--image-opts`), and the
//! typed getters (bool, number, size) over what they produced.
#![no_main]
use block::Options;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = if text.starts_with("json:") {
        Options::parse_json_filename(text)
    } else {
        Options::parse_keyval(text, Some("file"))
    };
    if let Ok(mut opts) = parsed {
        let _ = opts.to_json();
        let keys: Vec<String> = opts.iter().map(|(k, _)| k.to_string()).collect();
        for k in keys {
            let _ = opts.clone().take_bool(&k);
            let _ = opts.clone().take_u64(&k);
            let _ = opts.take_size(&k);
        }
    }
});
