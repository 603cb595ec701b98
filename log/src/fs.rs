//! How the log creates its files and folders: private to the server's user
//! (folders 0700, files 0600), since segments hold every message body and
//! password hash. The binary also sets the process umask; these modes hold
//! whatever umask it runs under (a umask only removes bits).

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Result};

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parent, each 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(Error::io(dir))
}

/// Takes group and other bits off a folder made by an older version, so
/// that the files inside it are private even where their own modes are not.
pub fn make_dir_private(dir: &Path) -> Result<()> {
    let mode = std::fs::metadata(dir).map_err(Error::io(dir))?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    tracing::warn!(path = %dir.display(), mode = format!("{:o}", mode & 0o777), "making the log's folder private (0700)");
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(Error::io(dir))
}

/// Creates a new, empty segment file (0600) open for appending. A file
/// left empty by an earlier failed roll is taken over; one holding bytes
/// is never overwritten.
pub fn create_segment_file(path: &Path) -> Result<File> {
    let file = OpenOptions::new().create(true).append(true).mode(FILE_MODE).open(path).map_err(Error::io(path))?;
    let length = file.metadata().map_err(Error::io(path))?.len();
    if length != 0 {
        return Err(Error::Corrupt { path: path.to_path_buf(), position: 0, reason: format!("a new segment's file already holds {length} bytes") });
    }
    Ok(file)
}

/// Writes a small file so that a crash leaves either the old or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&temporary).map_err(Error::io(&temporary))?;
    // A temporary file left by a crash keeps its old mode through `open`.
    file.set_permissions(Permissions::from_mode(FILE_MODE)).map_err(Error::io(&temporary))?;
    file.write_all(bytes).map_err(Error::io(&temporary))?;
    file.sync_all().map_err(Error::io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(Error::io(path))?;
    sync_dir(path.parent().expect("files live in a folder"))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(Error::io(dir))
}
