//! The pack loader on one pack file: YAML → events, rooms, schemas, scripts, targets,
//! `tests:` cases → a pack or diagnostics, never a panic or a hang. A loaded pack also
//! goes through what `wss-engine asyncapi` and `wss-engine diff` do with it (against the
//! fuzz pack, and against itself, which must show no change).
//!
//! The input is written as `p.yaml` into a directory that also holds `schemas/say.json`
//! and `scripts/ops.rhai` (copied from `packs/engine`), so `$ref`s and script files in
//! the input can resolve.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wss_engine::config;
use wss_engine::describe::asyncapi;
use wss_engine::diff;
use wss_engine::packtest::cases;
use wss_engine_fuzz::{engine_pack, pack_dir};

fuzz_target!(|bytes: &[u8]| {
    let d = pack_dir(&["schemas/say.json", "scripts/ops.rhai"]);
    std::fs::write(d.path.join("p.yaml"), bytes).expect("write the pack file");
    match config::load(&d.path, &d.runtime) {
        Ok(config::Loaded { pack, warnings }) => {
            assert!(!warnings.has_errors());
            show(&warnings);
            let _ = asyncapi::document(&pack, "fuzz");
            let _ = diff::diff(&engine_pack(), &pack);
            let _ = diff::diff(&pack, &engine_pack());
            let same = diff::diff(&pack, &pack);
            assert!(same.is_empty(), "a pack differs from itself: {same:?}");
        }
        Err(diags) => {
            assert!(diags.has_errors(), "a refused pack has no error:\n{diags}");
            show(&diags);
        }
    }
    let (_cases, diags) = cases::load(&d.path);
    show(&diags);
});

/// Render every diagnostic as `check` prints it, snippets included.
fn show(diags: &config::Diagnostics) {
    let _ = diags.to_string();
    for d in diags.iter() {
        let _ = d.snippet();
    }
}
