//! The final check of `rdlmfs-stress meta`: walking one view of the tree
//! into a [`Listing`] and diffing two listings.
//!
//! A listing holds what every node must agree on once the workers stop:
//! names, types, sizes, link counts, permission bits, owners, symlink
//! targets, `user.*` xattrs, file contents (by hash), and which names are
//! hard links of one another. Inode numbers and times are not compared:
//! inode numbers differ between views on some file systems, and times are
//! stamped by whichever node acted last.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The type of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    pub fn of(ft: fs::FileType) -> Kind {
        if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Other => "special file",
        }
    }
}

/// What one name in the tree looks like through one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    pub nlink: u64,
    /// Permission bits only (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// For symlinks, the target as stored.
    pub target: Option<String>,
    /// `user.*` xattrs, name to value.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For regular files, the FNV-1a hash of the contents.
    pub hash: Option<u64>,
    /// For a name whose inode was already seen under another name: that
    /// first name (in listing order). Compares the hard-link structure.
    pub link_of: Option<String>,
}

impl Entry {
    /// One line describing the entry, for "only in one view" reports.
    pub fn summary(&self) -> String {
        match self.kind {
            Kind::File => format!("file, {} bytes", self.size),
            Kind::Symlink => format!("symlink -> {}", self.target.as_deref().unwrap_or("?")),
            k => k.name().to_string(),
        }
    }
}

/// Every entry below a tree root, keyed by the path relative to the root
/// (`/`-separated).
pub type Listing = BTreeMap<String, Entry>;

/// A failure while walking a view; the run reports it as an impossible
/// errno, since the tree is quiescent by then.
#[derive(Debug)]
pub struct WalkError {
    pub op: &'static str,
    pub path: PathBuf,
    pub err: io::Error,
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {} ({})",
            self.op,
            self.path.display(),
            super::errno_name(super::io_errno(&self.err)),
            self.err
        )
    }
}

fn walk_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalkError + 'a {
    move |err| WalkError {
        op,
        path: path.to_path_buf(),
        err,
    }
}

/// Walks the tree below `root` (not including `root` itself).
pub fn walk(root: &Path) -> Result<Listing, WalkError> {
    let mut listing = Listing::new();
    let mut inodes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let rd = fs::read_dir(&dir).map_err(walk_err("opendir", &dir))?;
        for ent in rd {
            let ent = ent.map_err(walk_err("readdir", &dir))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let rel_child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let path = ent.path();
            let md = fs::symlink_metadata(&path).map_err(walk_err("lstat", &path))?;
            let kind = Kind::of(md.file_type());
            let target = if kind == Kind::Symlink {
                let t = fs::read_link(&path).map_err(walk_err("readlink", &path))?;
                Some(t.to_string_lossy().into_owned())
            } else {
                None
            };
            let hash = if kind == Kind::File {
                Some(hash_file(&path).map_err(walk_err("read", &path))?)
            } else {
                None
            };
            let xattrs = if matches!(kind, Kind::File | Kind::Dir) {
                user_xattrs(&path).map_err(walk_err("xattr", &path))?
            } else {
                // Linux allows no user.* xattrs on symlinks or special files.
                BTreeMap::new()
            };
            if kind == Kind::Dir {
                stack.push(rel_child.clone());
            } else {
                inodes.insert(rel_child.clone(), (md.dev(), md.ino()));
            }
            listing.insert(
                rel_child,
                Entry {
                    kind,
                    size: md.size(),
                    nlink: md.nlink(),
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    target,
                    xattrs,
                    hash,
                    link_of: None,
                },
            );
        }
    }
    // Listing order is the same in every view, so "first name of this inode"
    // is comparable between views even though inode numbers are not.
    let mut first: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for (rel, ino) in inodes {
        match first.get(&ino) {
            Some(f) => {
                if let Some(e) = listing.get_mut(&rel) {
                    e.link_of = Some(f.clone());
                }
            }
            None => {
                first.insert(ino, rel);
            }
        }
    }
    Ok(listing)
}

/// FNV-1a, 64 bits: stable across builds, so reports can be compared.
pub fn fnv1a(hash: u64, data: &[u8]) -> u64 {
    data.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The FNV-1a offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn hash_file(path: &Path) -> io::Result<u64> {
    // O_NOFOLLOW: the entry was a regular file when listed; never hash
    // something else if that changed.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut h = FNV_START;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h);
        }
        h = fnv1a(h, &buf[..n]);
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The `user.*` xattrs of `path` (not following symlinks). A file system
/// without xattr support has none.
pub fn user_xattrs(path: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let c = cstring(path)?;
    let mut out = BTreeMap::new();
    let names = loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return Ok(out);
            }
            return Err(e);
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let m = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            let e = io::Error::last_os_error();
            // The list grew between the two calls: ask again.
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        break buf;
    };
    for name in names.split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
        let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // Values are small (the tool writes at most 64 bytes); 64 KiB is the
        // Linux limit for any xattr value.
        let mut val = vec![0u8; 64 * 1024];
        // SAFETY: val is valid for val.len() bytes; both strings are NUL-terminated.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        val.truncate(n as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), val);
    }
    Ok(out)
}

/// One difference between two listings of the same tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diff {
    /// The name exists only in the first listing.
    OnlyInA { rel: String, a: String },
    /// The name exists only in the second listing.
    OnlyInB { rel: String, b: String },
    /// The name exists in both but `field` differs.
    Field {
        rel: String,
        field: &'static str,
        a: String,
        b: String,
    },
}

impl Diff {
    /// A report line naming the full path in both views.
    pub fn describe(&self, root_a: &Path, root_b: &Path) -> String {
        match self {
            Diff::OnlyInA { rel, a } => format!(
                "{rel}: {} exists ({a}) but {} does not",
                root_a.join(rel).display(),
                root_b.join(rel).display()
            ),
            Diff::OnlyInB { rel, b } => format!(
                "{rel}: {} does not exist but {} does ({b})",
                root_a.join(rel).display(),
                root_b.join(rel).display()
            ),
            Diff::Field { rel, field, a, b } => format!(
                "{rel}: {field} is {a} at {} but {b} at {}",
                root_a.join(rel).display(),
                root_b.join(rel).display()
            ),
        }
    }
}

fn show_xattrs(x: &BTreeMap<String, Vec<u8>>) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Every difference between `a` and `b`, in path order.
pub fn diff(a: &Listing, b: &Listing) -> Vec<Diff> {
    let mut out = Vec::new();
    let mut field = |rel: &str, name: &'static str, x: String, y: String| {
        if x != y {
            out.push(Diff::Field {
                rel: rel.to_string(),
                field: name,
                a: x,
                b: y,
            });
        }
    };
    let mut only = Vec::new();
    for (rel, ea) in a {
        let Some(eb) = b.get(rel) else {
            only.push(Diff::OnlyInA {
                rel: rel.clone(),
                a: ea.summary(),
            });
            continue;
        };
        field(rel, "type", ea.kind.name().into(), eb.kind.name().into());
        if ea.kind != eb.kind {
            // The remaining fields mean different things for different types.
            continue;
        }
        field(rel, "size", ea.size.to_string(), eb.size.to_string());
        field(
            rel,
            "link count",
            ea.nlink.to_string(),
            eb.nlink.to_string(),
        );
        field(
            rel,
            "mode",
            format!("{:04o}", ea.mode),
            format!("{:04o}", eb.mode),
        );
        field(rel, "uid", ea.uid.to_string(), eb.uid.to_string());
        field(rel, "gid", ea.gid.to_string(), eb.gid.to_string());
        field(
            rel,
            "symlink target",
            format!("{:?}", ea.target),
            format!("{:?}", eb.target),
        );
        field(
            rel,
            "user xattrs",
            show_xattrs(&ea.xattrs),
            show_xattrs(&eb.xattrs),
        );
        field(
            rel,
            "content hash",
            format!("{:016x}", ea.hash.unwrap_or(0)),
            format!("{:016x}", eb.hash.unwrap_or(0)),
        );
        field(
            rel,
            "hard link of",
            ea.link_of.clone().unwrap_or_else(|| "-".into()),
            eb.link_of.clone().unwrap_or_else(|| "-".into()),
        );
    }
    for (rel, eb) in b {
        if !a.contains_key(rel) {
            only.push(Diff::OnlyInB {
                rel: rel.clone(),
                b: eb.summary(),
            });
        }
    }
    out.extend(only);
    out.sort_by(|x, y| diff_rel(x).cmp(diff_rel(y)));
    out
}

fn diff_rel(d: &Diff) -> &str {
    match d {
        Diff::OnlyInA { rel, .. } | Diff::OnlyInB { rel, .. } | Diff::Field { rel, .. } => rel,
    }
}
