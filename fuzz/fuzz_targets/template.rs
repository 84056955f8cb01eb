//! The target and template language of packs (`to:`, `keys:`) and of scripts
//! (`emit(target, …)`), and the star globs of `rooms:` patterns.
//!
//! The input's first line is a target (`room:{{data.room}}-x`), its second a key
//! template, its third a glob pattern, the rest a JSON payload the templates render.
//!
//! Checked: nothing panics; a parsed target prints back to text that parses to an equal
//! target; a rendered name parses as a script target of the same kind; a template's
//! glob matches every name it renders; `glob_matches` agrees with `Glob`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wss_engine::config::target::KeySlot;
use wss_engine::config::{TargetSpec, Template, TemplateContext};
use wss_engine::delivery::Target;
use wss_engine::glob::{glob_matches, Glob};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let mut lines = text.splitn(4, '\n');
    let target = lines.next().unwrap_or_default();
    let key = lines.next().unwrap_or_default();
    let pattern = lines.next().unwrap_or_default();
    let data: Value = serde_json::from_str(lines.next().unwrap_or_default()).unwrap_or(Value::Null);
    let cx = TemplateContext {
        data: &data,
        conn_id: "fz-1",
        conn_user: Some("alice"),
    };

    if let Ok(spec) = TargetSpec::parse(target) {
        let again = TargetSpec::parse(&spec.to_string()).expect("a printed target parses");
        assert_eq!(again, spec);
        assert!(spec.same_recipients(&again));
        let _ = (spec.kind(), spec.reads_conn_user(), spec.data_paths());
        if let Ok(resolved) = spec.resolve(&cx) {
            let printed = resolved.to_string();
            if resolved != Target::None && resolved != Target::All {
                let back = Target::parse_resolved(&printed).expect("a resolved target reads back");
                assert_eq!(back, resolved, "{printed}");
            }
        }
    }
    // Script targets: computed text, no templates.
    if let Ok(t) = Target::parse(target, "fz-1") {
        assert_eq!(Target::parse_resolved(&t.to_string()), Some(t));
    }

    if let Ok(template) = Template::parse(key) {
        let skeleton = template.skeleton();
        let _ = (
            KeySlot::of_skeleton(&skeleton),
            template.hash_tag(),
            template.literal(),
        );
        if let Ok(name) = template.render(&cx) {
            let glob = template.glob();
            assert!(
                glob_matches(&glob, &name),
                "template {key:?} rendered {name:?}, which its glob {glob:?} does not match"
            );
        }
    }

    for candidate in [target, key, pattern, ""] {
        let agree = glob_matches(pattern, candidate);
        if pattern.contains('*') {
            assert_eq!(agree, Glob::new(pattern).matches(candidate));
        } else {
            assert_eq!(agree, pattern == candidate);
        }
    }
});
