//! `token_file`: the hub token kept in a file of its own instead of inside the config.
//!
//! This module owns the two rules of that key: where the file is ([`locate`]: an absolute
//! path as it is; a bare file name found in systemd's `$CREDENTIALS_DIRECTORY` first; any
//! other relative path against the config file's directory) and what a usable file holds
//! ([`parse`]: only the token, a trailing line break allowed). [`read`] applies them to a real
//! file. It does not decide whether `token_file` or `token` applies (the config does: exactly
//! one of them), and it never shows the token: every message names the file, not its
//! content, and the token leaves here only as a [`Secret`].

use std::path::{Path, PathBuf};

use crate::config::Secret;

/// The environment variable systemd sets to the directory of the unit's credentials
/// (`LoadCredential=`, `SetCredential=`).
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// Largest token file read: a token is a few dozen bytes; anything near this is the wrong
/// file.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Where the token file named `value` is.
///
/// - An absolute path is used as it is.
/// - A bare file name (no `/`, not `.` or `..`) is looked up in `credentials` (the value of
///   `$CREDENTIALS_DIRECTORY`) first, if that is set and the file exists there.
/// - Otherwise the value is relative to `base`, the config file's directory, like every
///   other path of the config.
pub fn locate(
    value: &str,
    base: &Path,
    credentials: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    let path = Path::new(value);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    if let Some(dir) = credentials.filter(|d| !d.as_os_str().is_empty()) {
        if is_bare_name(value) {
            let candidate = dir.join(value);
            if exists(&candidate) {
                return candidate;
            }
        }
    }
    base.join(path)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// A file name without any directory part.
fn is_bare_name(value: &str) -> bool {
    !value.is_empty()
        && value != "."
        && value != ".."
        && !value.contains('/')
        && !(cfg!(windows) && value.contains('\\'))
}

/// The token a file's bytes hold: the whole content, less trailing line breaks (`\n` or
/// `\r\n`, as editors and `echo` leave them). The message of an error never contains the
/// file's content.
pub fn parse(bytes: &[u8]) -> Result<Secret, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8 text")?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.trim().is_empty() {
        return Err("is empty");
    }
    if token.chars().any(char::is_control) {
        return Err(
            "holds more than the token (a line break or another control character inside it)",
        );
    }
    Ok(Secret::new(token))
}

/// Reads and checks the token file at `path`. The error says what is wrong with the file,
/// in words that can follow its path.
pub fn read(path: &Path) -> Result<Secret, String> {
    use crate::fsx::Untrusted;
    let unreadable = |e: std::io::Error| format!("cannot be read ({e})");
    if path.is_dir() {
        return Err("is a directory, not a file".into());
    }
    let Some(file) = crate::fsx::open_regular(path).map_err(unreadable)? else {
        return Err("is not a regular file (a FIFO or a device?)".into());
    };
    match crate::fsx::read_limited(file, MAX_TOKEN_FILE_BYTES).map_err(unreadable)? {
        Untrusted::Bytes(bytes) => parse(&bytes).map_err(str::to_string),
        Untrusted::TooLarge(_) => Err(format!(
            "is larger than {MAX_TOKEN_FILE_BYTES} bytes; it must hold only the token"
        )),
        Untrusted::NotRegular => Err("is not a regular file".into()),
    }
}

/// ssh-style warning, as for the config file: the file holds the token, so nobody but its
/// owner should be able to read it.
pub fn permission_warning(path: &Path) -> Option<String> {
    crate::config::private_file_warning(path, "token_file", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "/etc/agentcom-sidecar";

    fn at(value: &str, creds: Option<&str>, present: &[&str]) -> PathBuf {
        locate(value, Path::new(BASE), creds.map(Path::new), |p| {
            present.iter().any(|x| Path::new(x) == p)
        })
    }

    #[test]
    fn absolute_paths_are_used_as_they_are() {
        assert_eq!(
            at("/run/secrets/tok", Some("/run/creds"), &["/run/creds/tok"]),
            PathBuf::from("/run/secrets/tok")
        );
    }

    #[test]
    fn a_bare_name_is_found_in_the_credentials_directory_first() {
        assert_eq!(
            at("a1.token", Some("/run/creds/x"), &["/run/creds/x/a1.token"]),
            PathBuf::from("/run/creds/x/a1.token")
        );
        // Not there: relative to the config's directory, as without systemd.
        assert_eq!(
            at("a1.token", Some("/run/creds/x"), &[]),
            PathBuf::from("/etc/agentcom-sidecar/a1.token")
        );
        // No credentials directory (or an empty variable).
        assert_eq!(
            at("a1.token", None, &[]),
            PathBuf::from("/etc/agentcom-sidecar/a1.token")
        );
        assert_eq!(
            at("a1.token", Some(""), &["/a1.token"]),
            PathBuf::from("/etc/agentcom-sidecar/a1.token")
        );
    }

    #[test]
    fn a_path_with_a_directory_part_is_relative_to_the_config_only() {
        assert_eq!(
            at("./a1.token", Some("/run/creds"), &["/run/creds/a1.token"]),
            PathBuf::from("/etc/agentcom-sidecar/a1.token")
        );
        assert_eq!(
            at("secrets/a1.token", Some("/run/creds"), &[]),
            PathBuf::from("/etc/agentcom-sidecar/secrets/a1.token")
        );
        assert_eq!(
            at("..", Some("/run/creds"), &["/run"]),
            PathBuf::from("/etc/agentcom-sidecar/..")
        );
    }

    #[test]
    fn the_content_is_the_token_less_trailing_line_breaks() {
        assert_eq!(parse(b"s3cret").unwrap().expose(), "s3cret");
        assert_eq!(parse(b"s3cret\n").unwrap().expose(), "s3cret");
        assert_eq!(parse(b"s3cret\r\n").unwrap().expose(), "s3cret");
        assert_eq!(parse(b"s3cret\n\n").unwrap().expose(), "s3cret");
    }

    #[test]
    fn unusable_contents_are_refused_without_showing_them() {
        assert_eq!(parse(b"").unwrap_err(), "is empty");
        assert_eq!(parse(b"\n").unwrap_err(), "is empty");
        assert_eq!(parse(b"  \n").unwrap_err(), "is empty");
        let e = parse(b"s3cret\nother\n").unwrap_err();
        assert!(
            e.contains("more than the token") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(parse(b"s3\tcret").is_err());
        assert_eq!(parse(&[0xff, 0xfe]).unwrap_err(), "is not UTF-8 text");
    }

    #[test]
    fn reading_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read(&path).unwrap().expose(), "s3cret");
        let e = read(&dir.path().join("missing")).unwrap_err();
        assert!(e.starts_with("cannot be read"), "{e}");
        assert!(read(dir.path()).unwrap_err().contains("directory"));
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_FILE_BYTES as usize + 1]).unwrap();
        assert!(read(&path).unwrap_err().contains("larger than"));
    }
}
