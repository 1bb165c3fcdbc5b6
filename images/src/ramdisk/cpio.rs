//! The initramfs archive: cpio "new ASCII" (`newc`), the format the kernel unpacks (the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`), written deterministically.

use std::collections::BTreeMap;
use std::io::Write;

/// One entry of the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File {
        data: Vec<u8>,
        executable: bool,
    },
    Symlink(String),
    /// A character device node (major, minor), e.g. `/dev/console` = (5, 1).
    CharDev(u32, u32),
}

/// Writes `entries` (path without leading `/` → entry) as a cpio "newc" archive: owner root, mtime 0, inode
/// numbers in name order, and the `TRAILER!!!` record.
///
/// # Errors
/// Whatever `out` returns.
pub fn write_cpio_newc(out: &mut impl Write, entries: &BTreeMap<String, Entry>) -> std::io::Result<()> {
    fn pad(out: &mut impl Write, len: usize) -> std::io::Result<()> {
        out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
    }
    fn record(
        out: &mut impl Write,
        ino: u32,
        mode: u32,
        rdev: (u32, u32),
        name: &str,
        data: &[u8],
    ) -> std::io::Result<()> {
        let namesize = name.len() + 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        let mut hdr = String::with_capacity(110);
        hdr.push_str("070701");
        for f in fields {
            hdr.push_str(&format!("{f:08X}"));
        }
        out.write_all(hdr.as_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&[0])?;
        pad(out, 110 + namesize)?;
        out.write_all(data)?;
        pad(out, data.len())
    }
    for (i, (name, e)) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir => record(out, ino, 0o040755, (0, 0), name, &[])?,
            Entry::File { data, executable } => record(
                out,
                ino,
                if *executable { 0o100755 } else { 0o100644 },
                (0, 0),
                name,
                data,
            )?,
            Entry::Symlink(t) => record(out, ino, 0o120777, (0, 0), name, t.as_bytes())?,
            Entry::CharDev(ma, mi) => record(out, ino, 0o020600, (*ma, *mi), name, &[])?,
        }
    }
    record(out, 0, 0, (0, 0), "TRAILER!!!", &[])
}
