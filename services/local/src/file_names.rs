//! Object keys <-> file names inside a bucket folder. S3 takes any key of up to 1,024 bytes; a
//! file system takes names of up to 255 bytes without `/`. The mapping is injective and keeps
//! ordinary keys unchanged (`test_0` is the file `test_0`):
//!
//! - `%`, `/` and control characters are percent-escaped (`a/b` -> `a%2Fb`), so every key is one
//!   flat name and no key can be both a file and a folder;
//! - a name longer than 255 bytes is cut into pieces, `%L/<piece>/<piece>/.../<last piece>%`: the
//!   encoder never writes `%L` nor a name ending in a lone `%`, so these cannot collide with others.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use imgrec_domain::ports::ObjectKey;

/// The folder holding keys whose escaped name is too long for one file name.
pub const LONG_DIR: &str = "%L";
const MAX_NAME: usize = 255;
const PIECE: usize = 240;

fn escape(key: &str) -> String {
    let out = escape_chars(key);
    if out == "." || out == ".." {
        return out.replace('.', "%2E");
    }
    out
}

/// `key` escaped character by character: a prefix of a key escapes to a prefix of its name.
fn escape_chars(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if c == '%' || c == '/' || c.is_control() {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Which names of a bucket's own folder (not the long-name tree) may hold keys starting with a
/// prefix, told from the name's bytes alone: a list by prefix decodes only those, not every file
/// of a folder that holds every result.
pub struct NamesFor {
    escaped: String,
}

impl NamesFor {
    pub fn prefix(prefix: &str) -> Self {
        Self {
            escaped: escape_chars(prefix),
        }
    }

    /// False only if no key starting with the prefix is written to `name`.
    pub fn may_hold(&self, name: &[u8]) -> bool {
        // Only `.` and `..` are written otherwise, and no key is either (`ObjectKey` refuses dot
        // segments): their names are kept, in case.
        name.starts_with(self.escaped.as_bytes()) || name == b"%2E" || name == b"%2E%2E"
    }
}

fn unescape(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The largest cut at or below `max` that splits neither a character nor a `%XX` escape.
fn cut_at(s: &str, max: usize) -> usize {
    let mut cut = max.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let b = s.as_bytes();
    if cut >= 1 && b[cut - 1] == b'%' {
        cut -= 1;
    } else if cut >= 2 && b[cut - 2] == b'%' {
        cut -= 2;
    }
    cut
}

/// Where `key` lives, relative to its bucket's folder.
pub fn relative_path(key: &ObjectKey) -> PathBuf {
    let name = escape(key.as_str());
    if name.len() <= MAX_NAME {
        return PathBuf::from(name);
    }
    let mut path = PathBuf::from(LONG_DIR);
    let mut rest = name.as_str();
    while rest.len() + 1 > MAX_NAME {
        let cut = cut_at(rest, PIECE);
        path.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    path.push(format!("{rest}%"));
    path
}

/// The key stored at `relative` (a path `relative_path` gave), or `None` for a file it did not write.
pub fn key_of(relative: &Path) -> Option<ObjectKey> {
    let path = relative.to_str()?;
    let name = match path.strip_prefix(LONG_DIR).and_then(|p| p.strip_prefix('/')) {
        Some(pieces) => pieces.strip_suffix('%')?.replace('/', ""),
        None => path.to_owned(),
    };
    let key = ObjectKey::new(unescape(&name)?).ok()?;
    // Only the one path each key maps to: a foreign `%2f` or `%+1` is not the file of any key.
    (relative_path(&key).as_path() == relative).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(key: &str) -> PathBuf {
        let key = ObjectKey::new(key).unwrap();
        let path = relative_path(&key);
        for part in path.iter() {
            let part = part.to_str().unwrap();
            assert!(
                part.len() <= MAX_NAME && part != "." && part != ".." && !part.is_empty(),
                "{path:?}"
            );
        }
        assert_eq!(key_of(&path).as_ref(), Some(&key), "{path:?}");
        path
    }

    #[test]
    fn ordinary_keys_are_their_own_file_names() {
        for key in [
            "test_0",
            "test_0.JPEG",
            "..jpg",
            ".hidden",
            "ünïcode ファイル.png",
            "a\\b",
        ] {
            assert_eq!(round_trip(key), Path::new(key));
        }
    }

    #[test]
    fn every_other_key_maps_to_safe_names_and_back() {
        assert_eq!(round_trip("a/b"), Path::new("a%2Fb"));
        assert_eq!(round_trip("100%"), Path::new("100%25"));
        for key in ["/abs", "dir/", "a//b", "%L", "x%", "%2F"] {
            round_trip(key);
        }
        let names = [
            "x".repeat(256),
            "é".repeat(512),
            "%".repeat(341),
            "/".repeat(1024),
            format!("{}.jpg", "ファイル".repeat(84)),
        ];
        for key in &names {
            assert!(key.len() <= ObjectKey::MAX_LEN, "{}", key.len());
            let path = round_trip(key);
            assert!(path.starts_with(LONG_DIR), "{path:?}");
        }
        // Pieces cut at every offset near an escape stay whole escapes.
        for pad in 0..4 {
            round_trip(&format!("{}{}", "a".repeat(238 + pad), "%/".repeat(100)));
        }
    }

    #[test]
    fn distinct_keys_get_distinct_paths() {
        let keys = [
            "a",
            "a/",
            "a/b",
            "a%2Fb",
            "%L",
            "%L/x",
            "x".repeat(300).as_str(),
            &format!("{}%", "x".repeat(300)),
        ]
        .map(|k| relative_path(&ObjectKey::new(k).unwrap()));
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_keys_name_may_hold_every_prefix_of_the_key() {
        let keys = [
            "test_0.JPEG",
            "_imgrec/jobs/abc/test_0",
            "...",
            ".hidden",
            "100%",
            "a/b%c d//e",
            "ünïcode ファイル.png",
        ];
        for key in keys {
            let name = relative_path(&ObjectKey::new(key).unwrap());
            let name = name.to_str().unwrap().as_bytes();
            for (cut, _) in key.char_indices().chain([(key.len(), ' ')]) {
                assert!(
                    NamesFor::prefix(&key[..cut]).may_hold(name),
                    "{key:?} under {:?}",
                    &key[..cut]
                );
            }
        }
        let jobs = NamesFor::prefix("_imgrec/jobs/abc/");
        assert!(!jobs.may_hold(b"test_0"));
        assert!(!jobs.may_hold(b"_imgrec%2Fjobs%2Fabd%2Ftest_0"));
        assert!(!NamesFor::prefix("a/").may_hold(b"a"));
    }

    #[test]
    fn foreign_files_are_not_keys() {
        for path in ["a/b", "%zz", "%L/x", "%", "a%2fb", "%+1", "x%2E"] {
            assert_eq!(key_of(Path::new(path)), None, "{path}");
        }
    }
}
