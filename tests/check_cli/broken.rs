//! The corpus of broken packs under `tests/fixtures/broken/`: each fixture and every
//! diagnostic `check` must print for it, no more and no fewer.

/// One diagnostic `check` must print. `file` is relative to the fixture directory
/// (`""` for the directory itself).
pub struct Expected {
    pub file: &'static str,
    pub line: usize,
    pub col: usize,
    pub message: &'static str,
}

pub const fn at(file: &'static str, line: usize, col: usize, message: &'static str) -> Expected {
    Expected {
        file,
        line,
        col,
        message,
    }
}

/// Every broken fixture and everything `check` must say about it.
pub const BROKEN: &[(&str, &[Expected])] = &[
    // --- YAML and file structure
    (
        "yaml-syntax",
        &[at("pack.yaml", 5, 7, "invalid YAML: while parsing a flow mapping")],
    ),
    (
        "two-documents",
        &[at("pack.yaml", 6, 1, "a pack file holds one YAML document; remove the `---` separator")],
    ),
    (
        "empty-pack",
        &[at("", 1, 1, "no pack files: put *.yaml files with an `events:` map")],
    ),
    (
        "unknown-top-key",
        &[at("pack.yaml", 5, 1, "unknown field \"version\" in pack file (allowed: events, rooms)")],
    ),
    (
        "misspelt-top-key",
        &[at("pack.yaml", 1, 1, "unknown field \"evnets\" in pack file, did you mean \"events\"?")],
    ),
    (
        "events-not-a-map",
        &[at("pack.yaml", 2, 3, "`events` must be a mapping of event names to definitions, not a list")],
    ),
    // --- event names
    (
        "duplicate-event",
        &[at(
            "b.yaml",
            5,
            3,
            "event `chat.message` is already defined at tests/fixtures/broken/duplicate-event/a.yaml:2",
        )],
    ),
    (
        "reserved-name",
        &[at("pack.yaml", 2, 3, "`$join`: names starting with `$` are reserved")],
    ),
    (
        "invalid-event-name",
        &[at("pack.yaml", 2, 3, "invalid event name `chat message!`")],
    ),
    // --- event fields
    (
        "unknown-event-field",
        &[at(
            "pack.yaml",
            3,
            5,
            "unknown field \"scpoe\" in event `ping`, did you mean \"scope\"?",
        )],
    ),
    (
        "missing-scope",
        &[at("pack.yaml", 2, 3, "event `ping` needs `scope: local` or `scope: cluster`")],
    ),
    (
        "bad-scope",
        &[at("pack.yaml", 3, 12, "`scope` must be `local` or `cluster`, did you mean `cluster`?")],
    ),
    (
        "missing-schema",
        &[at("pack.yaml", 2, 3, "event `ping` needs a `schema` for its payload")],
    ),
    (
        "exclude-sender-not-bool",
        &[at("pack.yaml", 6, 21, "`exclude_sender` must be true or false, not a string")],
    ),
    (
        "auth-bad-value",
        &[at("pack.yaml", 5, 11, "`auth` must be `required` or `optional`")],
    ),
    (
        "emit-as-invalid",
        &[at("pack.yaml", 6, 14, "`emit_as`: invalid event name `chat message`")],
    ),
    (
        "keys-not-a-list",
        &[at("pack.yaml", 5, 11, "`keys` must be a list of state-key templates")],
    ),
    (
        "rate-limit-zero",
        &[at("pack.yaml", 5, 31, "`rate_limit.per_second` must be a number greater than 0")],
    ),
    (
        "rate-limit-burst",
        &[at("pack.yaml", 7, 14, "`rate_limit.burst` must be a number of at least 1")],
    ),
    (
        "rate-limit-unknown-key",
        &[at("pack.yaml", 5, 34, "unknown field \"brust\" in rate_limit, did you mean \"burst\"?")],
    ),
    // --- hooks
    (
        "hook-with-scope",
        &[at("pack.yaml", 3, 5, "hook `$connect` takes only a script (and description); remove \"scope\"")],
    ),
    (
        "hook-unknown-field",
        &[at(
            "pack.yaml",
            3,
            5,
            "unknown field \"scirpt\" in hook `$disconnect`, did you mean \"script\"?",
        )],
    ),
    // --- payload schemas
    (
        "invalid-inline-schema",
        &[at(
            "pack.yaml",
            7,
            23,
            "invalid JSON Schema at `/properties/room/type`: unknown type \"strin\", did you mean \"string\"?",
        )],
    ),
    (
        "unknown-schema-dialect",
        &[at("pack.yaml", 5, 16, "unknown `$schema` dialect")],
    ),
    (
        "ref-missing-file",
        &[at(
            "pack.yaml",
            4,
            21,
            "`$ref: schemas/nope.json`: no such file `tests/fixtures/broken/ref-missing-file/schemas/nope.json`",
        )],
    ),
    (
        "nested-ref-missing",
        &[at("schemas/message.json", 4, 23, "`$ref: room.json`: no such file")],
    ),
    (
        "remote-ref",
        &[at("pack.yaml", 5, 13, "packs never fetch schemas from the network")],
    ),
    (
        "bad-json-schema-file",
        &[at("schemas/room.json", 4, 3, "schema file is not valid JSON/YAML")],
    ),
    (
        "invalid-schema-in-file",
        &[at(
            "schemas/room.json",
            4,
            46,
            "invalid JSON Schema at `/properties/room/minLength`: -1 is less than the minimum of 0",
        )],
    ),
    // --- scripts
    (
        "script-syntax-inline",
        &[at("pack.yaml", 8, 21, "script: Unexpected ';'")],
    ),
    (
        "script-syntax-blank-line",
        &[at("pack.yaml", 8, 16, "script: Unexpected ')'")],
    ),
    (
        "script-syntax-quoted",
        &[at("pack.yaml", 5, 23, "script: Unexpected ')'")],
    ),
    (
        "script-file-error",
        &[at("scripts/message.rhai", 3, 20, "script: Unexpected ';'")],
    ),
    (
        "script-file-missing",
        &[at("pack.yaml", 5, 21, "script file `tests/fixtures/broken/script-file-missing/scripts/nope.rhai`")],
    ),
    (
        "script-wrong-type",
        &[at("pack.yaml", 5, 13, "`script` must be Rhai source or `{ file: path.rhai }`, not an integer")],
    ),
    (
        "unknown-function",
        &[at("pack.yaml", 7, 18, "script: unknown function `emitt`, did you mean `emit`?")],
    ),
    (
        "unknown-function-in-file",
        &[at("add.rhai", 2, 12, "script: unknown function `increment`")],
    ),
    (
        "undefined-variable",
        &[at("pack.yaml", 6, 19, "script: Undefined variable: txt")],
    ),
    // --- targets
    (
        "bad-to-kind",
        &[at("pack.yaml", 5, 9, "`to`: unknown target `rooms:lobby`")],
    ),
    (
        "unknown-template-root",
        &[at("pack.yaml", 5, 9, "`to`: unknown template `{{date.room}}`")],
    ),
    (
        "unclosed-template",
        &[at("pack.yaml", 5, 9, "`to`: unclosed `{{` in `{{data.room`")],
    ),
    (
        "to-missing-property",
        &[at(
            "pack.yaml",
            10,
            9,
            "`to` reads `data.channel`, but the schema allows no property `channel`",
        )],
    ),
    (
        "to-missing-property-ref",
        &[at(
            "pack.yaml",
            5,
            9,
            "`to` reads `data.rom`, but the schema allows no property `rom`, did you mean `room`?",
        )],
    ),
    // --- tests
    (
        "test-missing-expect",
        &[at("pack.yaml", 6, 9, "test `answers` needs an `expect`")],
    ),
    (
        "test-unknown-key",
        &[at("pack.yaml", 8, 9, "unknown field \"expcet\" in test case, did you mean \"expect\"?")],
    ),
    // --- rooms
    (
        "rooms-bad-glob",
        &[at(
            "pack.yaml",
            8,
            3,
            "rooms pattern `doc:[0-9]*` uses `[`, which is not supported: `*` (any run of characters, `:` included) is the only wildcard",
        )],
    ),
    (
        "rooms-empty-pattern",
        &[at("pack.yaml", 7, 3, "a rooms pattern is empty: name a room (`lobby`) or use `*`")],
    ),
    (
        "rooms-pattern-too-long",
        &[at("pack.yaml", 7, 3, "is 257 bytes long; the limit is 256")],
    ),
    (
        "rooms-size-zero",
        &[at(
            "pack.yaml",
            7,
            31,
            "`history.size` of rooms pattern `lobby` must be a whole number from 1 to 100000 (deliveries kept), not 0",
        )],
    ),
    (
        "rooms-size-too-large",
        &[at("pack.yaml", 9, 13, "from 1 to 100000 (deliveries kept), not 100001")],
    ),
    (
        "rooms-ttl-negative",
        &[at(
            "pack.yaml",
            7,
            41,
            "`history.ttl` of rooms pattern `lobby` must be a whole number from 1 to 2592000 (seconds; 30 days), not -5",
        )],
    ),
    (
        "rooms-ttl-float",
        &[at("pack.yaml", 7, 41, "`history.ttl` of rooms pattern `lobby` must be a whole number from 1 to 2592000 (seconds; 30 days), not 1.5")],
    ),
    (
        "rooms-missing-history",
        &[at("pack.yaml", 7, 12, "rooms pattern `lobby` needs `history: { size: <deliveries kept>, ttl: <seconds> }`")],
    ),
    (
        "rooms-unknown-key",
        &[at(
            "pack.yaml",
            7,
            14,
            "unknown field \"histroy\" in rooms pattern `lobby`, did you mean \"history\"?",
        )],
    ),
    (
        "rooms-history-unknown-key",
        &[at(
            "pack.yaml",
            7,
            36,
            "unknown field \"tll\" in history of rooms pattern `lobby`, did you mean \"ttl\"?",
        )],
    ),
    (
        "rooms-not-a-map",
        &[at("pack.yaml", 7, 3, "`rooms` must be a mapping of room patterns to settings")],
    ),
    (
        "rooms-unquoted-star",
        &[at(
            "pack.yaml",
            7,
            3,
            "a key or value starting with `*` must be quoted, as in `\"*\": …`",
        )],
    ),
    (
        "rooms-duplicate-pattern",
        &[at(
            "b.yaml",
            3,
            3,
            "rooms pattern `doc:*` is already declared at tests/fixtures/broken/rooms-duplicate-pattern/a.yaml:7",
        )],
    ),
    (
        "rooms-without-events",
        &[at("", 1, 1, "the pack defines no events: add an `events:` map to one of its files")],
    ),
    // --- every problem, not just the first
    (
        "many-mistakes",
        &[
            at("pack.yaml", 3, 12, "`scope` must be `local` or `cluster`, did you mean `local`?"),
            at("pack.yaml", 5, 3, "event `two` needs a `schema`"),
            at("pack.yaml", 10, 9, "`to`: unknown target `everyone`"),
        ],
    ),
];

/// Unknown functions in the positions a script walk can miss (see
/// `unknown_functions_are_found_in_every_position`).
pub const UNKNOWN_CALLS: &[(&str, &[Expected])] = &[
    (
        "unknown-function-statement",
        &[at(
            "pack.yaml",
            7,
            7,
            "script: unknown function `emitt`, did you mean `emit`?",
        )],
    ),
    (
        "unknown-method",
        &[at(
            "pack.yaml",
            7,
            13,
            "script: unknown function `sett`, did you mean `set`?",
        )],
    ),
];
