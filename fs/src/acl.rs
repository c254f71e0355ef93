//! Credentials, permission checks and POSIX ACLs.
//!
//! Owns: who a caller is ([`Cred`]), the POSIX permission algorithm with
//! and without an access ACL (POSIX.1e: owner, named users, owning and
//! named groups under the mask, others), the Linux xattr encoding of ACLs
//! (`system.posix_acl_access` / `_default`: version 2, then 8-byte entries
//! tag u16, perm u16, id u32), keeping mode bits and the access ACL in step,
//! and building a new file's ACL from its parent's default ACL. May not
//! touch: storage (ACLs are ordinary xattrs, `xattr.rs`).

use crate::error::{FsError, Result};

pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
pub const USER_OBJ: u16 = 0x01;
pub const USER: u16 = 0x02;
pub const GROUP_OBJ: u16 = 0x04;
pub const GROUP: u16 = 0x08;
pub const MASK: u16 = 0x10;
pub const OTHER: u16 = 0x20;

pub const MAY_READ: u32 = 4;
pub const MAY_WRITE: u32 = 2;
pub const MAY_EXEC: u32 = 1;

/// The caller of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Cred {
    pub fn root() -> Cred {
        Cred {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// A decoded ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl(pub Vec<AclEntry>);

impl Acl {
    /// Decodes the xattr value; malformed input is EINVAL.
    pub fn decode(b: &[u8]) -> Result<Acl> {
        if b.len() < 4 || !(b.len() - 4).is_multiple_of(8) {
            return Err(FsError::Errno(libc::EINVAL));
        }
        if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != VERSION {
            return Err(FsError::Errno(libc::EINVAL));
        }
        let mut v = Vec::new();
        for c in b[4..].chunks_exact(8) {
            let tag = u16::from_le_bytes([c[0], c[1]]);
            let perm = u16::from_le_bytes([c[2], c[3]]);
            let id = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            if ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&tag) || perm > 7 {
                return Err(FsError::Errno(libc::EINVAL));
            }
            v.push(AclEntry { tag, perm, id });
        }
        let acl = Acl(v);
        acl.validate()?;
        Ok(acl)
    }

    fn count(&self, tag: u16) -> usize {
        self.0.iter().filter(|e| e.tag == tag).count()
    }

    /// Exactly one USER_OBJ, GROUP_OBJ and OTHER; a MASK (exactly one)
    /// whenever there are named entries.
    fn validate(&self) -> Result<()> {
        let named = self.count(USER) + self.count(GROUP);
        let ok = self.count(USER_OBJ) == 1
            && self.count(GROUP_OBJ) == 1
            && self.count(OTHER) == 1
            && self.count(MASK) <= 1
            && (named == 0 || self.count(MASK) == 1);
        if ok {
            Ok(())
        } else {
            Err(FsError::Errno(libc::EINVAL))
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        let mut v = self.0.clone();
        v.sort_by_key(|e| (e.tag, e.id));
        for e in v {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    fn get(&self, tag: u16) -> Option<u16> {
        self.0.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    fn set(&mut self, tag: u16, perm: u16) {
        for e in &mut self.0 {
            if e.tag == tag {
                e.perm = perm;
            }
        }
    }

    /// Whether the ACL says no more than the mode bits (then it is not
    /// stored).
    pub fn is_minimal(&self) -> bool {
        self.0.len() == 3
    }

    /// The permission bits the ACL implies (owner, group-or-mask, other).
    pub fn mode_bits(&self) -> u32 {
        let u = u32::from(self.get(USER_OBJ).unwrap_or(0));
        let g = u32::from(self.get(MASK).or(self.get(GROUP_OBJ)).unwrap_or(0));
        let o = u32::from(self.get(OTHER).unwrap_or(0));
        (u << 6) | (g << 3) | o
    }

    /// chmod: the mode's permission bits go into the ACL (group bits into
    /// the mask when there is one).
    pub fn apply_mode(&mut self, mode: u32) {
        self.set(USER_OBJ, ((mode >> 6) & 7) as u16);
        if self.get(MASK).is_some() {
            self.set(MASK, ((mode >> 3) & 7) as u16);
        } else {
            self.set(GROUP_OBJ, ((mode >> 3) & 7) as u16);
        }
        self.set(OTHER, (mode & 7) as u16);
    }

    /// A new file's access ACL from the parent's default ACL and the
    /// creation mode: every permission is limited by the mode's bits.
    /// Returns the ACL and the resulting mode bits.
    pub fn inherit(&self, mode: u32) -> (Acl, u32) {
        let mut a = self.clone();
        let lim = |t: u16, bits: u32, a: &mut Acl| {
            if let Some(p) = a.get(t) {
                a.set(t, p & (bits & 7) as u16);
            }
        };
        lim(USER_OBJ, mode >> 6, &mut a);
        if a.get(MASK).is_some() {
            lim(MASK, mode >> 3, &mut a);
        } else {
            lim(GROUP_OBJ, mode >> 3, &mut a);
        }
        lim(OTHER, mode, &mut a);
        let bits = a.mode_bits();
        (a, bits)
    }
}

/// Whether `cred` may access a file with `mode`, owner `uid:gid` and
/// optional access ACL, for `want` (MAY_* bits).
pub fn permitted(mode: u32, uid: u32, gid: u32, acl: Option<&Acl>, cred: &Cred, want: u32) -> bool {
    if cred.is_root() {
        // Root may read and write anything; execute needs some x bit (or a
        // directory).
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        return want & MAY_EXEC == 0 || is_dir || mode & 0o111 != 0;
    }
    let ok = |perm: u32| perm & want == want;
    if cred.uid == uid {
        return ok((mode >> 6) & 7);
    }
    if let Some(acl) = acl {
        let mask = u32::from(acl.get(MASK).unwrap_or(7));
        for e in &acl.0 {
            if e.tag == USER && e.id == cred.uid {
                return ok(u32::from(e.perm) & mask);
            }
        }
        let mut matched = false;
        for e in &acl.0 {
            let hit = (e.tag == GROUP_OBJ && cred.in_group(gid))
                || (e.tag == GROUP && cred.in_group(e.id));
            if hit {
                matched = true;
                if ok(u32::from(e.perm) & mask) {
                    return true;
                }
            }
        }
        if matched {
            return false;
        }
        return ok(mode & 7);
    }
    if cred.in_group(gid) {
        return ok((mode >> 3) & 7);
    }
    ok(mode & 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| AclEntry { tag, perm, id })
            .collect())
    }

    #[test]
    fn named_user_is_limited_by_the_mask() {
        let a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 6, 1000),
            (GROUP_OBJ, 4, 0),
            (MASK, 4, 0),
            (OTHER, 0, 0),
        ]);
        let c = Cred {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        };
        assert!(permitted(0o100640, 0, 0, Some(&a), &c, MAY_READ));
        assert!(!permitted(0o100640, 0, 0, Some(&a), &c, MAY_WRITE));
        let back = Acl::decode(&a.encode()).unwrap();
        assert_eq!(back.encode(), a.encode());
        assert_eq!(back.mode_bits(), 0o740);
    }

    #[test]
    fn garbage_acls_are_einval() {
        for b in [
            &b""[..],
            b"\x02\0\0\0\x01",
            b"\x01\0\0\0\x01\0\x07\0\0\0\0\0",
        ] {
            assert_eq!(Acl::decode(b).unwrap_err().errno(), libc::EINVAL);
        }
        // Named entry without a mask.
        let a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 6, 1000),
            (GROUP_OBJ, 4, 0),
            (OTHER, 0, 0),
        ]);
        assert!(Acl::decode(&a.encode()).is_err());
    }

    #[test]
    fn plain_mode_checks() {
        let c = Cred {
            uid: 5,
            gid: 5,
            groups: vec![7],
        };
        assert!(permitted(0o100604, 1, 1, None, &c, MAY_READ));
        assert!(!permitted(0o100640, 1, 1, None, &c, MAY_READ));
        assert!(permitted(0o100640, 1, 7, None, &c, MAY_READ));
        assert!(!permitted(0o100600, 5, 1, None, &c, MAY_EXEC));
        assert!(!permitted(0o100600, 1, 1, None, &Cred::root(), MAY_EXEC));
        assert!(permitted(0o040000, 1, 1, None, &Cred::root(), MAY_EXEC));
    }
}
