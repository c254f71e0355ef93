//! Directories: lookup, insert, remove, retarget and listing of names.
//!
//! Owns: the two directory shapes of the format — *linear* (entries in the
//! dinode body while they fit) and *hashed* (GFS2's exhash: a JDATA hash
//! table of leaf pointers; a full leaf splits, a leaf at the table's depth
//! doubles the table, a leaf at the maximum depth chains) — and the
//! conversion from the first to the second. Lookup reads one table slot and
//! one leaf whatever the directory's size. Directories never shrink back
//! (as GFS2's do not).
//!
//! Listing order and cookies: entries are returned in (hash, name) order,
//! and an entry's cookie is derived from its hash, so a cookie stays valid
//! while other entries come and go (`rm -rf` unlinks while it lists).
//!
//! May not touch: link counts, times, permissions (`ops.rs`); each function
//! here reads the directory's dinode itself and writes it back, so a
//! caller must re-read the dinode afterwards.

use crate::error::{FsError, Result};
use crate::format::dinode::stuffed_capacity;
use crate::format::dir::{
    decode_entries, encode_entries, encode_table, entries_fit, leaf_area, name_hash, plan_dir,
    table_index, DirPlan,
};
use crate::format::rgrp::BlockState;
use crate::format::{Dinode, DinodeContent, DinodeFlags, DirEntry, FileType, Leaf, MAX_DIR_DEPTH};
use crate::mount::Fs;

const LINEAR: &str = "directory";

/// A listed entry with its cookie (the offset after it).
#[derive(Debug, Clone)]
pub struct Listed {
    pub cookie: u64,
    pub entry: DirEntry,
}

fn cookie_of(hash: u32, dup: u64) -> u64 {
    ((u64::from(hash) << 8) | dup.min(255)) + 1
}

impl Fs {
    fn linear_entries(&self, dir: u64, di: &Dinode) -> Result<Vec<DirEntry>> {
        match &di.content {
            DinodeContent::Stuffed(body) => Ok(decode_entries(&self.geo, dir, LINEAR, body)?),
            DinodeContent::Pointers(_) => {
                Err(self.corrupt(format!("directory {dir}: linear but not stuffed")))
            }
        }
    }

    fn write_linear(&mut self, dir: u64, di: &mut Dinode, entries: &[DirEntry]) -> Result<()> {
        let mut body = vec![0u8; stuffed_capacity(self.geo.block_size)];
        encode_entries(&self.geo, dir, LINEAR, entries, &mut body)?;
        di.content = DinodeContent::Stuffed(body);
        di.entries = entries.len() as u32;
        self.put_dinode(dir, di)
    }

    fn table_get(&mut self, dir: u64, di: &Dinode, slot: usize) -> Result<u64> {
        let b = self.jdata_read(dir, di, slot as u64 * 8, 8)?;
        let v = u64::from_le_bytes(b.try_into().map_err(|_| {
            self.corrupt(format!("directory {dir}: hash table slot {slot} missing"))
        })?);
        if !self.geo.is_valid_addr(v) {
            return Err(self.corrupt(format!(
                "directory {dir}: hash table slot {slot} points at {v}"
            )));
        }
        Ok(v)
    }

    fn read_leaf(&mut self, dir: u64, addr: u64) -> Result<Leaf> {
        let l: Leaf = self.cache.read_meta(&*self.dev, addr)?;
        if l.owner != dir {
            return Err(self.corrupt(format!(
                "leaf {addr} belongs to directory {}, reached from directory {dir}",
                l.owner
            )));
        }
        Ok(l)
    }

    /// The leaf chain a name hashes to: (slot, [(addr, leaf)...]).
    fn leaf_chain(&mut self, dir: u64, di: &Dinode, hash: u32) -> Result<Vec<(u64, Leaf)>> {
        let slot = table_index(hash, di.depth);
        let mut addr = self.table_get(dir, di, slot)?;
        let mut chain = Vec::new();
        while addr != 0 {
            if chain.len() > 1 << 20 {
                return Err(self.corrupt(format!("directory {dir}: leaf chain loops")));
            }
            let l = self.read_leaf(dir, addr)?;
            let next = l.next;
            chain.push((addr, l));
            addr = next;
        }
        Ok(chain)
    }

    /// Finds `name` in directory `dir`: the formal number of the inode it
    /// names (see [`crate::format::formal_ino`]) and its type.
    pub(crate) fn dir_lookup(&mut self, dir: u64, name: &[u8]) -> Result<Option<(u64, FileType)>> {
        let di = self.dinode(dir)?;
        if !di.is_dir() {
            return Err(FsError::Errno(libc::ENOTDIR));
        }
        let hash = name_hash(&self.geo.hash_key, name);
        if !di.is_exhash() {
            return Ok(self
                .linear_entries(dir, &di)?
                .into_iter()
                .find(|e| e.hash == hash && e.name == name)
                .map(|e| (e.formal, e.kind)));
        }
        for (_, l) in self.leaf_chain(dir, &di, hash)? {
            if let Some(e) = l.entries.iter().find(|e| e.hash == hash && e.name == name) {
                return Ok(Some((e.formal, e.kind)));
            }
        }
        Ok(None)
    }

    /// Adds `name` → the inode of formal number `formal` (the caller made
    /// sure the name is free).
    pub(crate) fn dir_add(
        &mut self,
        dir: u64,
        name: &[u8],
        formal: u64,
        kind: FileType,
    ) -> Result<()> {
        let mut di = self.dinode(dir)?;
        let e = DirEntry::new(&self.geo.hash_key, formal, kind, name);
        if !di.is_exhash() {
            let mut entries = self.linear_entries(dir, &di)?;
            entries.push(e);
            if entries_fit(&entries, stuffed_capacity(self.geo.block_size)) {
                return self.write_linear(dir, &mut di, &entries);
            }
            return self.make_hashed(dir, &mut di, entries);
        }
        loop {
            let chain = self.leaf_chain(dir, &di, e.hash)?;
            let area = leaf_area(self.geo.block_size);
            for (addr, l) in &chain {
                let mut entries = l.entries.clone();
                entries.push(e.clone());
                if entries_fit(&entries, area) {
                    let leaf = Leaf {
                        entries,
                        ..l.clone()
                    };
                    self.cache.write_meta(*addr, &leaf)?;
                    di.entries += 1;
                    return self.put_dinode(dir, &mut di);
                }
            }
            let (addr, first) = chain
                .first()
                .cloned()
                .ok_or_else(|| self.corrupt(format!("directory {dir}: empty leaf chain")))?;
            if chain.len() == 1 && u8::try_from(first.depth).unwrap_or(u8::MAX) < di.depth {
                self.split_leaf(dir, &mut di, addr, first)?;
            } else if di.depth < MAX_DIR_DEPTH && chain.len() == 1 {
                self.double_table(dir, &mut di)?;
            } else {
                // Maximum depth: chain a new leaf after the last one.
                let (last_addr, last) = chain.last().cloned().expect("non-empty");
                let (na, _, _) = self.rgrps.alloc(
                    &mut self.cache,
                    &*self.dev,
                    BlockState::Data,
                    Some(dir),
                    1,
                )?;
                di.blocks += 1;
                self.cache.write_meta(
                    na,
                    &Leaf {
                        owner: dir,
                        next: 0,
                        depth: last.depth,
                        entries: vec![e.clone()],
                    },
                )?;
                self.cache
                    .write_meta(last_addr, &Leaf { next: na, ..last })?;
                di.entries += 1;
                return self.put_dinode(dir, &mut di);
            }
        }
    }

    /// Converts a linear directory that overflowed into a hashed one.
    fn make_hashed(&mut self, dir: u64, di: &mut Dinode, entries: Vec<DirEntry>) -> Result<()> {
        let count = entries.len() as u32;
        let bs = self.geo.block_size;
        let DirPlan::Hashed {
            depth,
            leaves,
            slots,
        } = plan_dir(bs, entries).map_err(|d| self.corrupt(format!("directory {dir}: {d}")))?
        else {
            return Err(self.corrupt(format!("directory {dir}: overflowing entries fit linear")));
        };
        let mut addrs = Vec::with_capacity(leaves.len());
        for l in leaves {
            let (a, _, _) =
                self.rgrps
                    .alloc(&mut self.cache, &*self.dev, BlockState::Data, Some(dir), 1)?;
            self.cache.write_meta(
                a,
                &Leaf {
                    owner: dir,
                    next: 0,
                    depth: u16::from(l.depth),
                    entries: l.entries,
                },
            )?;
            addrs.push(a);
        }
        let table = encode_table(&slots.iter().map(|&i| addrs[i]).collect::<Vec<_>>());
        let cap = stuffed_capacity(bs);
        di.flags.0 |= DinodeFlags::EXHASH | DinodeFlags::JDATA;
        di.depth = depth;
        di.entries = count;
        di.blocks += addrs.len() as u64;
        let mut body = vec![0u8; cap];
        if table.len() <= cap {
            body[..table.len()].copy_from_slice(&table);
            di.size = table.len() as u64;
            di.content = DinodeContent::Stuffed(body);
            return self.put_dinode(dir, di);
        }
        // An empty JDATA file, which the write unstuffs and fills.
        di.size = 0;
        di.content = DinodeContent::Stuffed(body);
        self.jdata_write(dir, di, 0, &table)
    }

    /// Splits a full leaf of depth d < table depth into two of depth d+1.
    fn split_leaf(&mut self, dir: u64, di: &mut Dinode, addr: u64, leaf: Leaf) -> Result<()> {
        let d = u32::from(leaf.depth);
        let dd = u32::from(di.depth);
        let bit = 31 - d;
        let (hi, lo): (Vec<DirEntry>, Vec<DirEntry>) = leaf
            .entries
            .into_iter()
            .partition(|e| (e.hash >> bit) & 1 == 1);
        let (na, _, _) =
            self.rgrps
                .alloc(&mut self.cache, &*self.dev, BlockState::Data, Some(addr), 1)?;
        di.blocks += 1;
        let nd = leaf.depth + 1;
        self.cache.write_meta(
            addr,
            &Leaf {
                owner: dir,
                next: 0,
                depth: nd,
                entries: lo,
            },
        )?;
        self.cache.write_meta(
            na,
            &Leaf {
                owner: dir,
                next: 0,
                depth: nd,
                entries: hi,
            },
        )?;
        // The slots this leaf covered: find them from any slot pointing at it.
        let span = 1usize << (dd - d);
        let size = 1usize << dd;
        let mut start = None;
        let table = self.jdata_read(dir, di, 0, size * 8)?;
        for s in (0..size).step_by(span) {
            if u64::from_le_bytes(table[s * 8..s * 8 + 8].try_into().expect("8 bytes")) == addr {
                start = Some(s);
                break;
            }
        }
        let start = start.ok_or_else(|| {
            self.corrupt(format!("directory {dir}: leaf {addr} not in its table"))
        })?;
        let half = span / 2;
        let upper = vec![na; half];
        self.jdata_write(dir, di, ((start + half) * 8) as u64, &encode_table(&upper))
    }

    /// Doubles the hash table (each slot becomes two).
    fn double_table(&mut self, dir: u64, di: &mut Dinode) -> Result<()> {
        let size = 8usize << di.depth;
        let old = self.jdata_read(dir, di, 0, size)?;
        let mut new = Vec::with_capacity(size * 2);
        for c in old.chunks(8) {
            new.extend_from_slice(c);
            new.extend_from_slice(c);
        }
        // The write unstuffs the table if it no longer fits the dinode.
        di.depth += 1;
        self.jdata_write(dir, di, 0, &new)
    }

    /// Removes `name`; returns the formal number of the inode it named.
    pub(crate) fn dir_remove(&mut self, dir: u64, name: &[u8]) -> Result<u64> {
        let mut di = self.dinode(dir)?;
        let hash = name_hash(&self.geo.hash_key, name);
        if !di.is_exhash() {
            let mut entries = self.linear_entries(dir, &di)?;
            let Some(i) = entries
                .iter()
                .position(|e| e.hash == hash && e.name == name)
            else {
                return Err(FsError::Errno(libc::ENOENT));
            };
            let ino = entries.remove(i).formal;
            self.write_linear(dir, &mut di, &entries)?;
            return Ok(ino);
        }
        for (addr, mut l) in self.leaf_chain(dir, &di, hash)? {
            if let Some(i) = l
                .entries
                .iter()
                .position(|e| e.hash == hash && e.name == name)
            {
                let ino = l.entries.remove(i).formal;
                self.cache.write_meta(addr, &l)?;
                di.entries = di.entries.saturating_sub(1);
                self.put_dinode(dir, &mut di)?;
                return Ok(ino);
            }
        }
        Err(FsError::Errno(libc::ENOENT))
    }

    /// Points the existing entry `name` at the inode of formal number
    /// `formal` (rename over a target, a moved directory's "..").
    pub(crate) fn dir_set(
        &mut self,
        dir: u64,
        name: &[u8],
        formal: u64,
        kind: FileType,
    ) -> Result<()> {
        let mut di = self.dinode(dir)?;
        let hash = name_hash(&self.geo.hash_key, name);
        if !di.is_exhash() {
            let mut entries = self.linear_entries(dir, &di)?;
            let Some(e) = entries
                .iter_mut()
                .find(|e| e.hash == hash && e.name == name)
            else {
                return Err(FsError::Errno(libc::ENOENT));
            };
            e.formal = formal;
            e.kind = kind;
            return self.write_linear(dir, &mut di, &entries);
        }
        for (addr, mut l) in self.leaf_chain(dir, &di, hash)? {
            if let Some(e) = l
                .entries
                .iter_mut()
                .find(|e| e.hash == hash && e.name == name)
            {
                e.formal = formal;
                e.kind = kind;
                self.cache.write_meta(addr, &l)?;
                return self.put_dinode(dir, &mut di);
            }
        }
        Err(FsError::Errno(libc::ENOENT))
    }

    /// Entries with a cookie greater than `after`, in cookie order, at
    /// least `want` of them unless the directory ends first.
    pub(crate) fn dir_list(&mut self, dir: u64, after: u64, want: usize) -> Result<Vec<Listed>> {
        let di = self.dinode(dir)?;
        if !di.is_dir() {
            return Err(FsError::Errno(libc::ENOTDIR));
        }
        let with_cookies = |mut v: Vec<DirEntry>| -> Vec<Listed> {
            v.sort_by(|a, b| (a.hash, &a.name).cmp(&(b.hash, &b.name)));
            let mut out = Vec::with_capacity(v.len());
            let mut dup = 0u64;
            let mut prev = None;
            for e in v {
                dup = if prev == Some(e.hash) { dup + 1 } else { 0 };
                prev = Some(e.hash);
                out.push(Listed {
                    cookie: cookie_of(e.hash, dup),
                    entry: e,
                });
            }
            out
        };
        if !di.is_exhash() {
            let all = with_cookies(self.linear_entries(dir, &di)?);
            return Ok(all.into_iter().filter(|l| l.cookie > after).collect());
        }
        let slots = 1usize << di.depth;
        let table = self.jdata_read(dir, &di, 0, slots * 8)?;
        let mut out = Vec::new();
        let mut s = 0usize;
        while s < slots {
            let addr = u64::from_le_bytes(table[s * 8..s * 8 + 8].try_into().expect("8 bytes"));
            let first = self.read_leaf(dir, addr)?;
            let d = u32::from(first.depth).min(u32::from(di.depth));
            let span = 1usize << (u32::from(di.depth) - d);
            // Hashes this leaf covers end at the slot range's end.
            let last_slot = (s | (span - 1)) as u64;
            let hash_end = ((last_slot + 1) << (32 - u32::from(di.depth))) - 1;
            let max_cookie = cookie_of(hash_end as u32, 255);
            if max_cookie > after {
                let mut entries = first.entries.clone();
                let mut next = first.next;
                let mut guard = 0;
                while next != 0 && guard < 1 << 20 {
                    let l = self.read_leaf(dir, next)?;
                    entries.extend(l.entries);
                    next = l.next;
                    guard += 1;
                }
                out.extend(
                    with_cookies(entries)
                        .into_iter()
                        .filter(|l| l.cookie > after),
                );
                if out.len() >= want {
                    break;
                }
            }
            s = (s | (span - 1)) + 1;
        }
        Ok(out)
    }

    /// Every leaf block of a hashed directory (chains included).
    pub(crate) fn dir_leaves(&mut self, dir: u64, di: &Dinode) -> Result<Vec<u64>> {
        let slots = 1usize << di.depth;
        let table = self.jdata_read(dir, di, 0, slots * 8)?;
        let mut out: Vec<u64> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for c in table.chunks_exact(8) {
            let mut a = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            while a != 0 && seen.insert(a) {
                out.push(a);
                a = self.read_leaf(dir, a)?.next;
            }
        }
        Ok(out)
    }

    /// Whether a directory holds only "." and "..".
    pub(crate) fn dir_is_empty(&mut self, dir: u64) -> Result<bool> {
        Ok(self.dinode(dir)?.entries <= 2)
    }
}
