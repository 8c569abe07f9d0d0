//! File operations every part of the sidecar shares (part of the kit): the one atomic write,
//! private directories, directory fsync, and reading a file an agent wrote without trusting
//! it. Blocking: call from the blocking pool, never from the event loop.
//!
//! Task data is private: files written here are mode 0600 and directories created here 0700,
//! whatever the umask (the mode is set explicitly after creation). On Windows there are no
//! modes: files and directories take the access rules (ACL) of the directory they are created
//! in, so the operator keeps the sidecar's directories private (docs/usage/windows.md).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// Replaces `path` with `bytes` atomically (temporary file, fsync, rename, directory fsync),
/// mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut options = atomic_write_file::OpenOptions::new();
    #[cfg(unix)]
    {
        use atomic_write_file::unix::OpenOptionsExt as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600).preserve_mode(false);
    }
    let mut file = options.open(path)?;
    set_private(file.as_file())?;
    file.write_all(bytes)?;
    file.commit()
}

/// Creates `dir` (and its parents) if missing; a directory created here is mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Mode 0600 on an open file (its owner only).
pub fn set_private(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Makes renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Opens a file for appending, creating it mode 0600 (a wake command's output log); see
/// [`open_private`].
pub fn open_private_append(path: &Path) -> io::Result<File> {
    open_private(path, Access::Append)
}

/// How [`open_private`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Written at its end only (logs).
    Append,
    /// Read and written in place (the queue's lock file); never truncated on open.
    ReadWrite,
    /// Written at its end only, and may be a FIFO or a device the operator named (the log:
    /// a log shipper's pipe); still never a link.
    LogSink,
}

/// Opens a file the sidecar keeps in one of its own directories, creating it mode 0600 (and
/// its directory 0700) if missing. A link planted at the name is never followed (O_NOFOLLOW:
/// the open fails with a message that says so, and the link's target is untouched), nor is
/// anything but a regular file used unless `access` allows it (a FIFO cannot hang the open:
/// O_NONBLOCK). An existing file is made private too.
pub fn open_private(path: &Path, access: Access) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    match access {
        Access::Append | Access::LogSink => options.append(true),
        Access::ReadWrite => options.read(true).write(true).truncate(false),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    #[cfg(windows)]
    std::os::windows::fs::OpenOptionsExt::custom_flags(
        &mut options,
        windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OPEN_REPARSE_POINT,
    );
    let file = options.open(path).map_err(|e| refused_link(path, e))?;
    if !file.metadata()?.is_file() && access != Access::LogSink {
        return Err(io::Error::other(format!(
            "{} is not a regular file; refusing to use it",
            path.display()
        )));
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::MetadataExt;
        use windows_sys::Win32::Storage::FileSystem::FILE_ATTRIBUTE_REPARSE_POINT;
        if file.metadata()?.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
            return Err(io::Error::other(format!(
                "{} is a link; refusing to follow it",
                path.display()
            )));
        }
    }
    #[cfg(unix)]
    {
        // Back to blocking writes: O_NONBLOCK only kept the open itself from waiting.
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl(2) on a descriptor this function owns.
        unsafe {
            let fd = file.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    // Only a file of the sidecar's own is made private: never a device such as /dev/null.
    // A log file someone else owns (that this user may append to) keeps its mode.
    if file.metadata()?.is_file() {
        let made_private = set_private(&file);
        if access != Access::LogSink {
            made_private?;
        }
    }
    Ok(file)
}

/// Creates a new empty file mode 0600, never one that exists and never through a link (the
/// probe that proves a directory writable).
pub fn create_new_private(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path).map_err(|e| refused_link(path, e))
}

/// The error of an open that met a link where O_NOFOLLOW forbids one, in words.
fn refused_link(path: &Path, e: io::Error) -> io::Error {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return io::Error::other(format!(
            "{} is a symbolic link; refusing to follow it (someone else may have planted it)",
            path.display()
        ));
    }
    let _ = path;
    e
}

/// Why a directory the sidecar keeps state in is unsafe, if it is: writable by users other
/// than its owner (group or others), who could plant links or files in it. `None` where it
/// is safe, missing, or on a platform without modes. A directory with the sticky bit that
/// only others can write (like `/tmp`) is still reported: files in it can be planted.
pub fn writable_by_others(dir: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).ok()?.permissions().mode();
        if mode & 0o022 != 0 {
            let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => "its group and all users",
                (true, false) => "its group",
                _ => "all users",
            };
            return Some(format!(
                "{} (mode {:o}) is writable by {who}: anyone who can write there can plant links and files in the sidecar's state; make it private (chmod 700) or move the state elsewhere",
                dir.display(),
                mode & 0o7777
            ));
        }
        None
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Whether an I/O error is a passing shortage or interruption (out of descriptors, out of
/// memory, interrupted, would block) rather than something about the file itself: the read
/// or write is tried again later and is never the task's outcome.
pub fn is_transient(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory
    ) {
        return true;
    }
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(
                libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOMEM
                    | libc::EINTR
                    | libc::EAGAIN
                    | libc::ENOBUFS
            )
        )
    }
    #[cfg(not(unix))]
    false
}

/// What reading an untrusted file found.
#[derive(Debug)]
pub enum Untrusted {
    /// Its bytes (at most the limit).
    Bytes(Vec<u8>),
    /// Not a regular file (a symlink, a FIFO, a device, a directory): not read.
    NotRegular,
    /// Larger than the limit: not read (past the limit).
    TooLarge(u64),
}

/// Opens a file an agent wrote, without trusting it; `None` when it is not a regular file (a
/// link, a FIFO, a device, a directory), which is then not read. The last path component is
/// never followed: O_NOFOLLOW on Unix; on Windows the name itself is opened
/// (`FILE_FLAG_OPEN_REPARSE_POINT`) and any reparse point — symbolic link, junction, mount
/// point — is refused. Opening never blocks: O_NONBLOCK on Unix, so a FIFO behind the name
/// cannot hang the reader; Windows keeps no FIFOs in directories, and the device names it
/// reserves (`CON`, `NUL`, …) never reach here (task ids are checked). On Windows the file is
/// opened sharing read, write and delete, so the agent can still rename over it.
pub fn open_untrusted(path: &Path) -> io::Result<Option<File>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
    );
    #[cfg(windows)]
    std::os::windows::fs::OpenOptionsExt::custom_flags(
        &mut options,
        windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OPEN_REPARSE_POINT,
    );
    let file = match options.open(path) {
        Ok(f) => f,
        // O_NOFOLLOW on a symlink.
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        // Windows opens no directory without backup semantics: say what it is instead.
        Err(_) if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    #[cfg(windows)]
    {
        use std::os::windows::fs::MetadataExt;
        use windows_sys::Win32::Storage::FileSystem::FILE_ATTRIBUTE_REPARSE_POINT;
        if meta.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
            return Ok(None);
        }
    }
    Ok(meta.is_file().then_some(file))
}

/// Reads a file an agent wrote, without trusting it: opened as [`open_untrusted`] does, and at
/// most `max + 1` bytes are read (a file that grows without end, or `/dev/zero` behind the
/// name, cannot exhaust memory).
pub fn read_untrusted(path: &Path, max: u64) -> io::Result<Untrusted> {
    match open_untrusted(path)? {
        Some(file) => read_limited(file, max),
        None => Ok(Untrusted::NotRegular),
    }
}

/// Reads an open file of at most `max` bytes: never more than `max + 1` bytes are read, so a
/// file that grows without end cannot exhaust memory.
pub fn read_limited(file: File, max: u64) -> io::Result<Untrusted> {
    let len = file.metadata()?.len();
    if len > max {
        return Ok(Untrusted::TooLarge(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Ok(Untrusted::TooLarge(bytes.len() as u64));
    }
    Ok(Untrusted::Bytes(bytes))
}

/// Opens a file the operator named (links are followed: a mounted secret often is one)
/// without blocking on it (O_NONBLOCK on Unix: a FIFO cannot hang the reader); `None` when
/// it is not a regular file.
pub fn open_regular(path: &Path) -> io::Result<Option<File>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        libc::O_NONBLOCK | libc::O_NOCTTY,
    );
    let file = options.open(path)?;
    Ok(file.metadata()?.is_file().then_some(file))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: umask(2) only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let nested = dir.path().join("a/b");
        let file = nested.join("q.json");
        write_atomic(&file, b"{}").unwrap();
        write_atomic(&file, b"{\"x\":1}").unwrap();
        let log = nested.join("w.log");
        open_private_append(&log).unwrap();
        unsafe { libc::umask(old) };
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(std::fs::read(&file).unwrap(), b"{\"x\":1}");
    }

    #[test]
    fn untrusted_reads_refuse_links_fifos_and_endless_files() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, b"{\"a\":1}").unwrap();
        assert!(
            matches!(read_untrusted(&real, 100).unwrap(), Untrusted::Bytes(b) if b == b"{\"a\":1}")
        );
        assert!(matches!(
            read_untrusted(&real, 3).unwrap(),
            Untrusted::TooLarge(7)
        ));

        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            read_untrusted(&link, 100).unwrap(),
            Untrusted::NotRegular
        ));

        let fifo = dir.path().join("fifo.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this open would wait for a writer forever.
        assert!(matches!(
            read_untrusted(&fifo, 100).unwrap(),
            Untrusted::NotRegular
        ));

        let zero = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_untrusted(&zero, 100).unwrap(),
            Untrusted::NotRegular
        ));
        assert!(matches!(
            read_untrusted(Path::new("/dev/zero"), 100).unwrap(),
            Untrusted::NotRegular
        ));
    }

    #[test]
    fn private_opens_and_probes_never_write_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        for name in ["lock", "log", "probe"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        let e = open_private(&dir.path().join("lock"), Access::ReadWrite).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = open_private(&dir.path().join("log"), Access::Append).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(create_new_private(&dir.path().join("probe")).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_private(&fifo, Access::Append).unwrap_err();
        assert!(
            e.to_string().contains("not a regular file") || e.raw_os_error() == Some(libc::ENXIO),
            "{e}"
        );
    }

    #[test]
    fn only_passing_shortages_are_transient() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EINTR,
            libc::EAGAIN,
        ] {
            assert!(
                is_transient(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [libc::EACCES, libc::ENOENT, libc::EISDIR, libc::EIO] {
            assert!(
                !is_transient(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }
}
