//! The receiver's checks of an offered manifest.
//!
//! Every path must be relative, made of plain names (no `.`, `..` or empty components), each
//! a valid file name here and portable (no NUL, control characters or backslashes, no Windows
//! device names, at most 255 bytes), listed once, and never below a file. Placement on disk
//! (in `p2pcall-core`) adds the checks that need the filesystem: no component of an existing
//! target may be a symlink, and nothing is ever overwritten ([`unique_name`]).

use std::collections::{HashMap, HashSet};

use p2pcall_proto::text::is_bidi_control;
use p2pcall_proto::transfer::{Entry, EntryKind};

/// Longest file name component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// Why a manifest was refused. One variant per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SanitizeError {
    /// The offer lists nothing.
    #[error("the offer lists no files or folders")]
    Empty,
    /// An absolute path (`/x`, `\x`, `C:x`).
    #[error("absolute path {0:?} refused")]
    Absolute(String),
    /// A `..` component.
    #[error("path {0:?} climbs out with \"..\"")]
    ParentDir(String),
    /// A `.` component.
    #[error("path {0:?} has a \".\" component")]
    CurrentDir(String),
    /// An empty component (`a//b`, trailing `/`, empty path).
    #[error("path {0:?} has an empty component")]
    EmptyComponent(String),
    /// A character no file name here may hold, or one that could act as a separator or
    /// control a terminal.
    #[error("path {path:?} holds the forbidden character {ch:?}")]
    InvalidCharacter {
        /// The path.
        path: String,
        /// The character.
        ch: char,
    },
    /// A Windows device name (`CON`, `NUL`, `COM1`, `LPT1.txt` …).
    #[error("path {path:?} uses the device name {name:?}")]
    DeviceName {
        /// The path.
        path: String,
        /// The component.
        name: String,
    },
    /// A component longer than [`MAX_NAME`] bytes.
    #[error("a name in {0:?} is longer than 255 bytes")]
    NameTooLong(String),
    /// The same path twice.
    #[error("path {0:?} is listed twice")]
    Duplicate(String),
    /// A path below something the offer says is a file.
    #[error("path {0:?} lies below a file")]
    BelowFile(String),
    /// The sizes add up beyond 2^64 bytes.
    #[error("the sizes in the offer overflow")]
    SizeOverflow,
}

/// One sanitised entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    /// The path's components (plain names).
    pub components: Vec<String>,
    /// Folder or file.
    pub kind: EntryKind,
    /// Permission bits to apply: rwx only, and always readable and writable by the owner.
    pub mode: u32,
}

/// A manifest that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Entries in manifest order (the same indices as the offer).
    pub entries: Vec<PlannedEntry>,
    /// Distinct first components, in order of appearance.
    pub tops: Vec<String>,
    /// Number of files.
    pub files: u64,
    /// Number of folders (explicit entries).
    pub dirs: u64,
    /// Sum of file sizes.
    pub total_bytes: u64,
}

const DEVICE_NAMES: &[&str] = &["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"];

fn is_device_name(name: &str) -> bool {
    let base = name.split('.').next().unwrap_or(name);
    let base = base.trim_end_matches([' ', '.']).to_ascii_uppercase();
    if DEVICE_NAMES.contains(&base.as_str()) {
        return true;
    }
    // COM0-9 and LPT0-9 (also with superscript digits, which Windows treats the same).
    match (base.get(..3), base.get(3..)) {
        (Some("COM" | "LPT"), Some(n)) => {
            let mut c = n.chars();
            matches!(
                (c.next(), c.next()),
                (Some('0'..='9' | '¹' | '²' | '³'), None)
            )
        }
        _ => false,
    }
}

fn check_path(path: &str) -> Result<Vec<String>, SanitizeError> {
    let err = || path.to_string();
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(SanitizeError::Absolute(err()));
    }
    let b = path.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err(SanitizeError::Absolute(err()));
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" => return Err(SanitizeError::EmptyComponent(err())),
            "." => return Err(SanitizeError::CurrentDir(err())),
            ".." => return Err(SanitizeError::ParentDir(err())),
            _ => {}
        }
        if let Some(ch) = c
            .chars()
            .find(|&ch| ch == '\0' || ch == '\\' || ch.is_control() || is_bidi_control(ch))
        {
            return Err(SanitizeError::InvalidCharacter { path: err(), ch });
        }
        if c.len() > MAX_NAME {
            return Err(SanitizeError::NameTooLong(err()));
        }
        if is_device_name(c) {
            return Err(SanitizeError::DeviceName {
                path: err(),
                name: c.to_string(),
            });
        }
        out.push(c.to_string());
    }
    Ok(out)
}

/// Permission bits a received entry gets: the sender's read and execute bits (never write
/// for group or others, never setuid, setgid or sticky), always readable and writable (and,
/// for folders, searchable) by the owner. Whether a file keeps its execute bits is the
/// receiver's choice ([`without_exec`]).
pub fn safe_mode(mode: u32, dir: bool) -> u32 {
    (mode & 0o755) | if dir { 0o700 } else { 0o600 }
}

/// A file's mode without any execute bit (what a received file gets unless the user chose
/// to keep them).
pub fn without_exec(mode: u32) -> u32 {
    mode & !0o111
}

/// Checks every entry of an offer.
pub fn sanitize(entries: &[Entry]) -> Result<Plan, SanitizeError> {
    if entries.is_empty() {
        return Err(SanitizeError::Empty);
    }
    let mut seen: HashMap<Vec<String>, bool> = HashMap::with_capacity(entries.len());
    let mut tops = Vec::new();
    let mut top_set = HashSet::new();
    let mut plan = Plan {
        entries: Vec::with_capacity(entries.len()),
        tops: Vec::new(),
        files: 0,
        dirs: 0,
        total_bytes: 0,
    };
    for e in entries {
        let components = check_path(&e.path)?;
        let is_file = matches!(e.kind, EntryKind::File { .. });
        if seen.insert(components.clone(), is_file).is_some() {
            return Err(SanitizeError::Duplicate(e.path.clone()));
        }
        if top_set.insert(components[0].clone()) {
            tops.push(components[0].clone());
        }
        match e.kind {
            EntryKind::Dir => plan.dirs += 1,
            EntryKind::File { size } => {
                plan.files += 1;
                plan.total_bytes = plan
                    .total_bytes
                    .checked_add(size)
                    .ok_or(SanitizeError::SizeOverflow)?;
            }
        }
        plan.entries.push(PlannedEntry {
            components,
            kind: e.kind,
            mode: safe_mode(e.mode, !is_file),
        });
    }
    // No entry may lie below a file (checked once every entry is known: order is free).
    for (e, p) in entries.iter().zip(&plan.entries) {
        for depth in 1..p.components.len() {
            if seen.get(&p.components[..depth]) == Some(&true) {
                return Err(SanitizeError::BelowFile(e.path.clone()));
            }
        }
    }
    plan.tops = tops;
    Ok(plan)
}

/// `name` if `exists` says it is free, else `stem (1).ext`, `stem (2).ext` … (`.tar.*` and
/// leading-dot names keep their whole suffix). `None` after 9999 tries.
pub fn unique_name(name: &str, mut exists: impl FnMut(&str) -> bool) -> Option<String> {
    if !exists(name) {
        return Some(name.to_string());
    }
    let split = name
        .find(".tar.")
        .filter(|&i| i > 0)
        .or_else(|| name.rfind('.').filter(|&i| i > 0));
    let (stem, ext) = split.map_or((name, ""), |i| name.split_at(i));
    (1..10_000)
        .map(|n| format!("{stem} ({n}){ext}"))
        .find(|c| c.len() <= MAX_NAME && !exists(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File { size: 1 },
            mode: 0o644,
            mtime: 0,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime: 0,
        }
    }

    fn refused(entries: &[Entry]) -> SanitizeError {
        sanitize(entries).expect_err("must be refused")
    }

    #[test]
    fn a_normal_tree_passes() {
        let p = sanitize(&[
            dir("photos"),
            dir("photos/empty"),
            file("photos/été 🌞.jpg"),
            file("notes.txt"),
            file("photos/sub/deep.bin"),
        ])
        .unwrap();
        assert_eq!(p.tops, ["photos", "notes.txt"]);
        assert_eq!((p.files, p.dirs, p.total_bytes), (3, 2, 3));
        assert_eq!(p.entries[2].components, ["photos", "été 🌞.jpg"]);
    }

    #[test]
    fn one_hostile_manifest_per_rule() {
        assert_eq!(refused(&[]), SanitizeError::Empty);
        assert!(matches!(
            refused(&[file("/etc/passwd")]),
            SanitizeError::Absolute(_)
        ));
        assert!(matches!(
            refused(&[file("\\windows\\x")]),
            SanitizeError::Absolute(_)
        ));
        assert!(matches!(
            refused(&[file("C:evil")]),
            SanitizeError::Absolute(_)
        ));
        assert!(matches!(
            refused(&[file("../../.bashrc")]),
            SanitizeError::ParentDir(_)
        ));
        assert!(matches!(
            refused(&[file("a/../../x")]),
            SanitizeError::ParentDir(_)
        ));
        assert!(matches!(
            refused(&[file("a/./x")]),
            SanitizeError::CurrentDir(_)
        ));
        assert!(matches!(
            refused(&[file("a//x")]),
            SanitizeError::EmptyComponent(_)
        ));
        assert!(matches!(
            refused(&[file("a/")]),
            SanitizeError::EmptyComponent(_)
        ));
        assert!(matches!(
            refused(&[file("")]),
            SanitizeError::EmptyComponent(_)
        ));
        assert!(matches!(
            refused(&[file("a\0b")]),
            SanitizeError::InvalidCharacter { ch: '\0', .. }
        ));
        assert!(matches!(
            refused(&[file("a\\..\\b")]),
            SanitizeError::InvalidCharacter { ch: '\\', .. }
        ));
        assert!(matches!(
            refused(&[file("evil\x1b[2Jname")]),
            SanitizeError::InvalidCharacter { ch: '\x1b', .. }
        ));
        assert!(matches!(
            refused(&[file("a\nb")]),
            SanitizeError::InvalidCharacter { ch: '\n', .. }
        ));
        for dev in ["CON", "nul.txt", "dir/COM1", "lpt9.log", "aux .c", "CONIN$"] {
            assert!(
                matches!(refused(&[file(dev)]), SanitizeError::DeviceName { .. }),
                "{dev}"
            );
        }
        assert!(matches!(
            refused(&[file(&"x".repeat(256))]),
            SanitizeError::NameTooLong(_)
        ));
        assert!(matches!(
            refused(&[file("a"), file("a")]),
            SanitizeError::Duplicate(_)
        ));
        assert!(matches!(
            refused(&[dir("a"), file("a")]),
            SanitizeError::Duplicate(_)
        ));
        assert!(matches!(
            refused(&[file("a/b/c"), file("a/b")]),
            SanitizeError::BelowFile(_)
        ));
        assert!(matches!(
            refused(&[file("x"), file("x/y")]),
            SanitizeError::BelowFile(_)
        ));
        let big = |p: &str| Entry {
            kind: EntryKind::File { size: u64::MAX },
            ..file(p)
        };
        assert_eq!(refused(&[big("a"), big("b")]), SanitizeError::SizeOverflow);
    }

    #[test]
    fn ordinary_names_that_look_odd_pass() {
        sanitize(&[
            file("console.log"),
            file("COM10"),
            file("nullable.rs"),
            file(".hidden"),
            file("...x"),
            file("a..b"),
            file(&"x".repeat(255)),
        ])
        .unwrap();
    }

    #[test]
    fn modes_lose_special_bits_and_group_or_world_write_and_keep_the_owner_in() {
        assert_eq!(safe_mode(0o4755, false), 0o755);
        assert_eq!(safe_mode(0o6777, false), 0o755);
        assert_eq!(safe_mode(0o000, false), 0o600);
        assert_eq!(safe_mode(0o1777, true), 0o755);
        assert_eq!(safe_mode(0o022, true), 0o700);
        assert_eq!(safe_mode(0o055, true), 0o755);
        assert_eq!(without_exec(safe_mode(0o4755, false)), 0o644);
    }

    #[test]
    fn names_that_reorder_text_are_refused() {
        for name in [
            "invoice\u{202E}fdp.exe",
            "a\u{2066}b",
            "x\u{200F}",
            "y\u{061C}z",
        ] {
            let e = sanitize(&[file(name)]).unwrap_err();
            assert!(
                matches!(e, SanitizeError::InvalidCharacter { .. }),
                "{name:?}: {e}"
            );
        }
        // Right-to-left scripts themselves are names like any other.
        sanitize(&[file("\u{05E9}\u{05DC}\u{05D5}\u{05DD}.txt")]).unwrap();
    }

    #[test]
    fn unique_names_never_overwrite() {
        let taken = ["a.txt", "a (1).txt", "dir", "x.tar.gz", ".bashrc"];
        let ex = |n: &str| taken.contains(&n);
        assert_eq!(unique_name("new.txt", ex).unwrap(), "new.txt");
        assert_eq!(unique_name("a.txt", ex).unwrap(), "a (2).txt");
        assert_eq!(unique_name("dir", ex).unwrap(), "dir (1)");
        assert_eq!(unique_name("x.tar.gz", ex).unwrap(), "x (1).tar.gz");
        assert_eq!(unique_name(".bashrc", ex).unwrap(), ".bashrc (1)");
        assert_eq!(unique_name("full", |_| true), None);
    }
}
