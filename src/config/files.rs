//! The files of a pack, and what a load read of them: their paths and the fingerprint
//! of their content.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest file a pack may consist of (a pack file, a schema, a script): far above any
/// real one, and a bound on what `check` or a reload reads.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// Read a file of a pack as text. Only regular files: a `$ref` or `script: { file }`
/// naming `/dev/zero` or `/dev/stdin`, or a FIFO, would otherwise read without end or
/// block the loader (and with it `check`, a start or a reload) forever. Found by the
/// `pack_yaml` fuzz target's review of what a pack may name.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    // `metadata` follows symlinks (a Kubernetes ConfigMap is symlinks to files), and
    // is checked before opening: opening a FIFO blocks until someone writes to it.
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than the limit of {} MiB", MAX_FILE_BYTES >> 20),
        ));
    }
    Ok(text)
}

/// The pack files of a directory: `*.yaml`/`*.yml` in it and in its `events/`, sorted.
pub fn pack_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for d in [dir.to_path_buf(), dir.join("events")] {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if d != dir && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let is_yaml = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml");
            if is_yaml && path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What a load read: every file (what a `--watch` reload watches) and the fingerprint
/// of their content.
pub(super) struct Sources {
    fingerprint: Fingerprint,
    pub(super) paths: BTreeSet<PathBuf>,
}

impl Sources {
    pub(super) fn new() -> Self {
        Self {
            fingerprint: Fingerprint::new(),
            paths: BTreeSet::new(),
        }
    }

    /// Count a file in: `name` (how the pack names it) and then its text go into the
    /// fingerprint, in the order files are read.
    pub(super) fn record(&mut self, path: &Path, name: &[u8], text: &str) {
        self.fingerprint.write(name);
        self.fingerprint.write(text.as_bytes());
        self.paths.insert(path.to_path_buf());
    }

    pub(super) fn fingerprint(&self) -> String {
        self.fingerprint.hex()
    }
}

/// FNV-1a over every file the pack reads: cheap, stable across builds and platforms,
/// and only compared for equality (two nodes serving different packs).
struct Fingerprint(u64);

impl Fingerprint {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}
