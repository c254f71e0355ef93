//! The fsx engine: opens the paths, generates or replays operations,
//! performs them with plain system calls, and checks data, size and
//! SEEK_DATA/SEEK_HOLE against the shadow after every one.

use super::ops::{data_byte, op_of_byte, parse_line, LoggedOp, Op, Shadow};
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Length of the per-offset salt mixed into written bytes (a prime, so it
/// does not line up with block sizes).
const SALT_LEN: usize = 4093;

/// How a run ended badly.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
    /// The path index whose view is saved as the "bad" copy.
    pub path: Option<usize>,
}

fn syscall_failure(what: String, e: std::io::Error) -> Failure {
    Failure {
        code: EXIT_SYSCALL,
        message: format!("{what}: {e}"),
        path: None,
    }
}

struct Features {
    mmap_read: bool,
    mmap_write: bool,
    fallocate: bool,
    punch: bool,
    zero: bool,
    copy: bool,
    seek: bool,
}

pub struct Fsx {
    args: Args,
    seed: u64,
    rng: StdRng,
    salt: Vec<u8>,
    files: Vec<File>,
    shadow: Shadow,
    features: Features,
    recent: VecDeque<LoggedOp>,
    ops_log: BufWriter<File>,
    ops_log_path: PathBuf,
    record: Option<BufWriter<File>>,
    log_dir: PathBuf,
    base: String,
    counts: BTreeMap<&'static str, u64>,
    page: u64,
    /// Operations to replay, read before the new log can overwrite them.
    replay: Option<Vec<LoggedOp>>,
}

fn open_rw(p: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(p)
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn cvt(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn align_down(x: u64, a: u64) -> u64 {
    x - x % a
}

impl Fsx {
    /// Opens (and empties) the file and prepares logs.
    pub fn new(args: Args) -> Result<Fsx, Failure> {
        let usage = |m: String| Failure {
            code: EXIT_USAGE,
            message: m,
            path: None,
        };
        args.validate().map_err(usage)?;
        let replay = match &args.replay_ops {
            Some(p) => Some(read_ops(p).map_err(usage)?),
            None => None,
        };
        let seed = args.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            t ^ u64::from(std::process::id()) << 32
        });
        let mut rng = StdRng::seed_from_u64(seed);
        let mut salt = vec![0u8; SALT_LEN];
        rng.fill(&mut salt[..]);
        // The first path creates and empties the file; the others must be
        // views of that same file.
        let first = &args.paths[0];
        let f0 = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(first)
            .map_err(|e| syscall_failure(format!("open {}", first.display()), e))?;
        let mut files = vec![f0];
        for p in &args.paths[1..] {
            files.push(open_rw(p).map_err(|e| {
                syscall_failure(
                    format!("open {} (every path must name the same file)", p.display()),
                    e,
                )
            })?);
        }
        let log_dir = args.log_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| syscall_failure(format!("create log dir {}", log_dir.display()), e))?;
        let base = first
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "fsx".into());
        let ops_log_path = log_dir.join(format!("{base}.fsxops"));
        let ops_log = File::create(&ops_log_path)
            .map(BufWriter::new)
            .map_err(|e| syscall_failure(format!("create {}", ops_log_path.display()), e))?;
        let record = match &args.record_ops {
            Some(p) => Some(
                File::create(p)
                    .map(BufWriter::new)
                    .map_err(|e| syscall_failure(format!("create {}", p.display()), e))?,
            ),
            None => None,
        };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        let features = Features {
            mmap_read: !args.no_mmap_read,
            mmap_write: !args.no_mmap_write,
            fallocate: !args.no_fallocate,
            punch: !args.no_punch,
            zero: !args.no_zero,
            copy: !args.no_copy,
            seek: !args.no_seek,
        };
        let mut fsx = Fsx {
            args,
            seed,
            rng,
            salt,
            files,
            shadow: Shadow::default(),
            features,
            recent: VecDeque::new(),
            ops_log,
            ops_log_path,
            record,
            log_dir,
            base,
            counts: BTreeMap::new(),
            page,
            replay,
        };
        fsx.probe();
        Ok(fsx)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Turns off operations the file system does not support, as fsx does,
    /// so that "unsupported" is a notice rather than a failure.
    fn probe(&mut self) {
        let fd = self.files[0].as_raw_fd();
        let unsupported = |e: i32| {
            e == libc::EOPNOTSUPP || e == libc::ENOSYS || e == libc::EINVAL || e == libc::EXDEV
        };
        let off = |name: &str, flag: &mut bool, errno: i32| {
            if *flag && unsupported(errno) {
                if !self.args.quiet {
                    println!(
                        "rdlmfs-fsx: {name} not supported here ({}); leaving it out",
                        std::io::Error::from_raw_os_error(errno)
                    );
                }
                *flag = false;
            }
        };
        let probe_falloc = |mode: libc::c_int| -> i32 {
            // SAFETY: fallocate on our own descriptor; the file is empty and
            // KEEP_SIZE keeps it so.
            if unsafe { libc::fallocate(fd, mode | libc::FALLOC_FL_KEEP_SIZE, 0, 1) } < 0 {
                errno_of(&std::io::Error::last_os_error())
            } else {
                0
            }
        };
        off("fallocate", &mut self.features.fallocate, probe_falloc(0));
        off(
            "punch hole",
            &mut self.features.punch,
            probe_falloc(libc::FALLOC_FL_PUNCH_HOLE),
        );
        off(
            "zero range",
            &mut self.features.zero,
            probe_falloc(libc::FALLOC_FL_ZERO_RANGE),
        );
        let (mut a, mut b) = (0i64, 0i64);
        // SAFETY: zero-length copy within our own file.
        let rc = unsafe { libc::copy_file_range(fd, &mut a, fd, &mut b, 0, 0) };
        let e = if rc < 0 {
            errno_of(&std::io::Error::last_os_error())
        } else {
            0
        };
        off("copy_file_range", &mut self.features.copy, e);
        // SAFETY: lseek on our own descriptor. ENXIO (no data in an empty
        // file) means SEEK_DATA is understood.
        let rc = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
        let e = if rc < 0 {
            errno_of(&std::io::Error::last_os_error())
        } else {
            0
        };
        off(
            "SEEK_DATA/SEEK_HOLE",
            &mut self.features.seek,
            if e == libc::ENXIO { 0 } else { e },
        );
    }

    fn pick_path(&mut self, num: u64) -> usize {
        let k = self.files.len();
        match self.args.path_choice {
            PathChoice::Rotate => (num % k as u64) as usize,
            PathChoice::Random => self.rng.gen_range(0..k),
        }
    }

    fn rand_len(&mut self, align: u64) -> u64 {
        let len = self.rng.gen_range(1..=self.args.max_op);
        align_down(len, align).max(align)
    }

    /// A random operation for the current shadow state.
    fn generate(&mut self) -> Op {
        let size = self.shadow.len();
        let max_len = self.args.max_len;
        if self.args.reopen_every > 0 && self.rng.gen_range(0..self.args.reopen_every) == 0 {
            return Op::Reopen;
        }
        let f = &self.features;
        let choices: [(u32, bool); 13] = [
            (10, true),        // read
            (10, true),        // write
            (4, f.mmap_read),  // mapread
            (4, f.mmap_write), // mapwrite
            (3, true),         // truncate
            (2, f.fallocate),  // fallocate
            (2, f.punch),      // punch
            (2, f.zero),       // zero
            (2, f.copy),       // copy
            (1, true),         // fsync
            (1, true),         // fdatasync
            (1, f.seek),       // seekdata
            (1, f.seek),       // seekhole
        ];
        let total: u32 = choices.iter().filter(|c| c.1).map(|c| c.0).sum();
        let mut pick = self.rng.gen_range(0..total);
        let mut kind = 0;
        for (i, (w, on)) in choices.iter().enumerate() {
            if !on {
                continue;
            }
            if pick < *w {
                kind = i;
                break;
            }
            pick -= w;
        }
        let (ra, wa, ta) = (
            self.args.read_align,
            self.args.write_align,
            self.args.trunc_align,
        );
        // Operations that need existing data fall back to a write on an
        // empty file.
        let needs_data = matches!(kind, 0 | 2 | 6 | 8 | 11 | 12);
        if needs_data && size == 0 {
            kind = 1;
        }
        match kind {
            0 | 2 => {
                let off = align_down(self.rng.gen_range(0..size), ra);
                let len = self.rand_len(ra).min(size - off).max(1);
                if kind == 0 {
                    Op::Read { off, len }
                } else {
                    Op::MapRead { off, len }
                }
            }
            1 | 3 => {
                let off = align_down(self.rng.gen_range(0..max_len), wa);
                let len = self.rand_len(wa).min(max_len - off).max(1);
                if kind == 1 {
                    Op::Write { off, len }
                } else {
                    Op::MapWrite { off, len }
                }
            }
            4 => Op::Truncate {
                size: align_down(self.rng.gen_range(0..=max_len), ta),
            },
            5 | 7 => {
                let off = self.rng.gen_range(0..max_len);
                let len = self.rand_len(1).min(max_len - off).max(1);
                let keep_size = self.rng.gen_bool(0.5);
                if kind == 5 {
                    Op::Fallocate {
                        off,
                        len,
                        keep_size,
                    }
                } else {
                    Op::ZeroRange {
                        off,
                        len,
                        keep_size,
                    }
                }
            }
            6 => {
                let off = self.rng.gen_range(0..size);
                let len = self.rand_len(1).min(size - off).max(1);
                Op::PunchHole { off, len }
            }
            8 => {
                let src = self.rng.gen_range(0..size);
                let len = self.rand_len(1).min(size - src).max(1);
                // A destination that does not overlap the source (the
                // kernel refuses overlapping ranges within one file).
                let dst = self.rng.gen_range(0..max_len - len.min(max_len - 1));
                if dst < src + len && src < dst + len {
                    return Op::Read { off: src, len };
                }
                Op::Copy { src, dst, len }
            }
            9 => Op::Fsync,
            10 => Op::Fdatasync,
            11 => Op::SeekData {
                off: self.rng.gen_range(0..size),
            },
            _ => Op::SeekHole {
                off: self.rng.gen_range(0..size),
            },
        }
    }

    fn bytes_for(&self, num: u64, off: u64, len: u64) -> Vec<u8> {
        (off..off + len)
            .map(|o| data_byte(num, &self.salt, o))
            .collect()
    }

    fn describe(&self, l: &LoggedOp) -> String {
        format!(
            "op {} {} through path {} ({})",
            l.num,
            l.op,
            l.path,
            self.args.paths[l.path].display()
        )
    }

    /// Reads `len` bytes at `off` through path `p`, stopping at end of file.
    fn pread(&self, p: usize, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let mut done = 0usize;
        while done < buf.len() {
            match self.files[p].read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Compares `got` with the shadow at `off`.
    fn check_bytes(
        &self,
        l: &LoggedOp,
        what: &str,
        off: u64,
        got: &[u8],
        want_len: u64,
    ) -> Result<(), Failure> {
        let end = (off + want_len).min(self.shadow.len());
        let want = &self.shadow.data[off.min(end) as usize..end as usize];
        if got == want {
            return Ok(());
        }
        let mut msg = format!("{what} BAD DATA: {}\n", self.describe(l));
        if got.len() != want.len() {
            msg.push_str(&format!(
                "  short or long read: got {} bytes, expected {}\n",
                got.len(),
                want.len()
            ));
        }
        msg.push_str("  OFFSET      GOOD  BAD   (bad byte written by op # mod 256)\n");
        let mut shown = 0;
        let mut first_bad = None;
        for i in 0..got.len().min(want.len()) {
            if got[i] != want[i] {
                let o = off + i as u64;
                first_bad.get_or_insert(o);
                if shown < 16 {
                    msg.push_str(&format!(
                        "  {o:#010x}  {:#04x}  {:#04x}  {}\n",
                        want[i],
                        got[i],
                        op_of_byte(got[i], &self.salt, o)
                    ));
                }
                shown += 1;
            }
        }
        if shown > 16 {
            msg.push_str(&format!("  ... {} differing bytes in all\n", shown));
        }
        if let Some(o) = first_bad {
            msg.push_str(&format!("  first bad offset {o:#x} ({o})\n"));
        }
        Err(Failure {
            code: EXIT_BAD_DATA,
            message: msg,
            path: Some(l.path),
        })
    }

    fn check_size(&self, l: &LoggedOp, p: usize) -> Result<(), Failure> {
        let f = &self.files[p];
        let st = f
            .metadata()
            .map_err(|e| syscall_failure(format!("fstat after {}", self.describe(l)), e))?;
        // SAFETY: lseek on our descriptor; pread/pwrite do not use the offset.
        let end = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
        let want = self.shadow.len();
        if st.len() != want || end < 0 || end as u64 != want {
            return Err(Failure {
                code: EXIT_BAD_SIZE,
                message: format!(
                    "BAD SIZE after {}: through path {p} ({}) fstat says {}, SEEK_END says {end}, expected {want}",
                    self.describe(l),
                    self.args.paths[p].display(),
                    st.len()
                ),
                path: Some(p),
            });
        }
        Ok(())
    }

    fn map(
        &self,
        p: usize,
        off: u64,
        len: u64,
        write: bool,
    ) -> std::io::Result<(*mut u8, usize, usize)> {
        let start = align_down(off, self.page);
        let map_len = (off + len - start) as usize;
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of our own descriptor; the caller
        // keeps the range inside the file, so no access faults.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                self.files[p].as_raw_fd(),
                start as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok((addr as *mut u8, map_len, (off - start) as usize))
    }

    /// Performs one operation and checks what it returned.
    fn execute(&mut self, l: &LoggedOp) -> Result<(), Failure> {
        let p = l.path;
        let fd = self.files[p].as_raw_fd();
        let ctx = |s: &Self, call: &str| format!("{call} failed in {}", s.describe(l));
        match l.op {
            Op::Read { off, len } => {
                let got = self
                    .pread(p, off, len)
                    .map_err(|e| syscall_failure(ctx(self, "pread"), e))?;
                self.check_bytes(l, "READ", off, &got, len)?;
            }
            Op::Write { off, len } => {
                let data = self.bytes_for(l.num, off, len);
                self.files[p]
                    .write_all_at(&data, off)
                    .map_err(|e| syscall_failure(ctx(self, "pwrite"), e))?;
                self.shadow.write(off, &data);
            }
            Op::MapRead { off, len } => {
                if off + len > self.shadow.len() {
                    return Ok(()); // the file shrank in a replayed log
                }
                let (addr, map_len, at) = self
                    .map(p, off, len, false)
                    .map_err(|e| syscall_failure(ctx(self, "mmap"), e))?;
                // SAFETY: [at, at+len) lies inside the mapping just made.
                let got =
                    unsafe { std::slice::from_raw_parts(addr.add(at), len as usize) }.to_vec();
                // SAFETY: unmapping what we mapped.
                unsafe { libc::munmap(addr as *mut libc::c_void, map_len) };
                self.check_bytes(l, "MAPREAD", off, &got, len)?;
            }
            Op::MapWrite { off, len } => {
                if off + len > self.shadow.len() {
                    // As fsx does: extend first, since storing past EOF
                    // through a mapping faults.
                    self.files[p]
                        .set_len(off + len)
                        .map_err(|e| syscall_failure(ctx(self, "ftruncate"), e))?;
                    self.shadow.resize(off + len);
                }
                let data = self.bytes_for(l.num, off, len);
                let (addr, map_len, at) = self
                    .map(p, off, len, true)
                    .map_err(|e| syscall_failure(ctx(self, "mmap"), e))?;
                // SAFETY: the range lies inside the writable mapping.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), addr.add(at), data.len());
                }
                // SAFETY: msync/munmap of our own mapping.
                let rc = unsafe { libc::msync(addr as *mut libc::c_void, map_len, libc::MS_SYNC) };
                let err = std::io::Error::last_os_error();
                unsafe { libc::munmap(addr as *mut libc::c_void, map_len) };
                if rc != 0 {
                    return Err(syscall_failure(ctx(self, "msync"), err));
                }
                self.shadow.write(off, &data);
            }
            Op::Truncate { size } => {
                self.files[p]
                    .set_len(size)
                    .map_err(|e| syscall_failure(ctx(self, "ftruncate"), e))?;
                self.shadow.resize(size);
            }
            Op::Fallocate {
                off,
                len,
                keep_size,
            } => {
                let mode = if keep_size {
                    libc::FALLOC_FL_KEEP_SIZE
                } else {
                    0
                };
                // SAFETY: fallocate on our own descriptor.
                cvt(unsafe { libc::fallocate(fd, mode, off as i64, len as i64) })
                    .map_err(|e| syscall_failure(ctx(self, "fallocate"), e))?;
                if !keep_size && off + len > self.shadow.len() {
                    self.shadow.resize(off + len);
                }
            }
            Op::PunchHole { off, len } => {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                // SAFETY: as above.
                cvt(unsafe { libc::fallocate(fd, mode, off as i64, len as i64) })
                    .map_err(|e| syscall_failure(ctx(self, "fallocate(PUNCH_HOLE)"), e))?;
                self.shadow.zero(off, len);
            }
            Op::ZeroRange {
                off,
                len,
                keep_size,
            } => {
                let mode = libc::FALLOC_FL_ZERO_RANGE
                    | if keep_size {
                        libc::FALLOC_FL_KEEP_SIZE
                    } else {
                        0
                    };
                // SAFETY: as above.
                cvt(unsafe { libc::fallocate(fd, mode, off as i64, len as i64) })
                    .map_err(|e| syscall_failure(ctx(self, "fallocate(ZERO_RANGE)"), e))?;
                self.shadow.zero(off, len);
                if !keep_size && off + len > self.shadow.len() {
                    self.shadow.resize(off + len);
                }
            }
            Op::Copy { src, dst, len } => {
                let avail = self.shadow.len().saturating_sub(src).min(len);
                let source: Vec<u8> =
                    self.shadow.data[src as usize..(src + avail) as usize].to_vec();
                let (mut s, mut d) = (src as i64, dst as i64);
                let mut copied = 0u64;
                while copied < avail {
                    // SAFETY: copy within our own file; offsets are ours.
                    let n = unsafe {
                        libc::copy_file_range(fd, &mut s, fd, &mut d, (avail - copied) as usize, 0)
                    };
                    if n < 0 {
                        return Err(syscall_failure(
                            ctx(self, "copy_file_range"),
                            std::io::Error::last_os_error(),
                        ));
                    }
                    if n == 0 {
                        break;
                    }
                    copied += n as u64;
                }
                if copied != avail {
                    return Err(Failure {
                        code: EXIT_SYSCALL,
                        message: format!(
                            "copy_file_range copied {copied} of {avail} bytes in {}",
                            self.describe(l)
                        ),
                        path: Some(p),
                    });
                }
                self.shadow.write(dst, &source);
            }
            Op::Fsync => self.files[p]
                .sync_all()
                .map_err(|e| syscall_failure(ctx(self, "fsync"), e))?,
            Op::Fdatasync => self.files[p]
                .sync_data()
                .map_err(|e| syscall_failure(ctx(self, "fdatasync"), e))?,
            Op::Reopen => {
                for i in 0..self.files.len() {
                    let f = open_rw(&self.args.paths[i])
                        .map_err(|e| syscall_failure(ctx(self, "reopen"), e))?;
                    self.files[i] = f;
                }
            }
            Op::SeekData { off } | Op::SeekHole { off } => self.check_seek(l, off)?,
        }
        Ok(())
    }

    /// SEEK_DATA may report data early (a hole may be stored as data) but
    /// never skip data; a reported hole must read as zeroes.
    fn check_seek(&self, l: &LoggedOp, off: u64) -> Result<(), Failure> {
        let fd = self.files[l.path].as_raw_fd();
        let size = self.shadow.len();
        if off >= size {
            return Ok(());
        }
        let seek = |whence| -> Result<Option<u64>, std::io::Error> {
            // SAFETY: lseek on our own descriptor.
            let r = unsafe { libc::lseek(fd, off as i64, whence) };
            if r >= 0 {
                return Ok(Some(r as u64));
            }
            let e = std::io::Error::last_os_error();
            if errno_of(&e) == libc::ENXIO {
                Ok(None)
            } else {
                Err(e)
            }
        };
        let bad = |m: String| Failure {
            code: EXIT_BAD_SEEK,
            message: format!("SEEK BAD: {}: {m}", self.describe(l)),
            path: Some(l.path),
        };
        match l.op {
            Op::SeekData { .. } => {
                let got = seek(libc::SEEK_DATA).map_err(|e| {
                    syscall_failure(format!("lseek(SEEK_DATA) in {}", self.describe(l)), e)
                })?;
                let next = self.shadow.next_nonzero(off);
                match (got, next) {
                    (None, Some(n)) => {
                        return Err(bad(format!("ENXIO (no data) but byte {n} is non-zero")))
                    }
                    (Some(d), _) if d < off || d > size => {
                        return Err(bad(format!("returned {d}, outside [{off}, {size}]")))
                    }
                    (Some(d), Some(n)) if d > n => {
                        return Err(bad(format!("returned {d}, skipping non-zero byte at {n}")))
                    }
                    _ => {}
                }
            }
            _ => {
                let got = seek(libc::SEEK_HOLE).map_err(|e| {
                    syscall_failure(format!("lseek(SEEK_HOLE) in {}", self.describe(l)), e)
                })?;
                let Some(h) = got else {
                    return Err(bad("ENXIO for an offset inside the file".into()));
                };
                if h < off || h > size {
                    return Err(bad(format!("returned {h}, outside [{off}, {size}]")));
                }
                if h < size {
                    // The hole runs to the next data; all of it must be zero.
                    // SAFETY: as above.
                    let nd = unsafe { libc::lseek(fd, h as i64, libc::SEEK_DATA) };
                    let nd = if nd < 0 { size } else { (nd as u64).min(size) };
                    if let Some(n) = self.shadow.next_nonzero(h) {
                        if n < nd {
                            return Err(bad(format!("hole at {h}..{nd} covers non-zero byte {n}")));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn log_op(&mut self, l: &LoggedOp) {
        let _ = writeln!(self.ops_log, "{l}");
        if let Some(r) = &mut self.record {
            let _ = writeln!(r, "{l}");
        }
        if self.recent.len() == self.args.show_last.max(1) {
            self.recent.pop_front();
        }
        self.recent.push_back(*l);
        *self.counts.entry(l.op.name()).or_default() += 1;
        if self.args.debug {
            println!("{}", self.describe(l));
        }
    }

    /// One operation: perform, then check size through every path and, with
    /// -X, the whole file through every path.
    fn step(&mut self, l: LoggedOp) -> Result<(), Failure> {
        if l.path >= self.files.len() {
            return Err(Failure {
                code: EXIT_USAGE,
                message: format!(
                    "replayed op {} uses path {} but only {} paths were given",
                    l.num,
                    l.path,
                    self.files.len()
                ),
                path: None,
            });
        }
        self.log_op(&l);
        self.execute(&l)?;
        for p in 0..self.files.len() {
            self.check_size(&l, p)?;
        }
        if self.args.reread {
            for p in 0..self.files.len() {
                let len = self.shadow.len();
                let got = self
                    .pread(p, 0, len)
                    .map_err(|e| syscall_failure(format!("re-read through path {p}"), e))?;
                let view = LoggedOp { path: p, ..l };
                self.check_bytes(&view, "RE-READ", 0, &got, len)?;
            }
        }
        Ok(())
    }

    /// Runs the whole test; returns the exit code.
    pub fn run(&mut self) -> i32 {
        let started = Instant::now();
        let deadline = self
            .args
            .duration
            .map(|s| started + std::time::Duration::from_secs(s));
        let replay = self.replay.take();
        if !self.args.quiet {
            println!(
                "rdlmfs-fsx: seed {} on {} path(s): {}{}",
                self.seed,
                self.files.len(),
                self.args
                    .paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                if replay.is_some() { " (replaying)" } else { "" }
            );
        }
        let mut done = 0u64;
        let result = (|| -> Result<(), Failure> {
            if let Some(ops) = &replay {
                for l in ops {
                    self.step(*l)?;
                    done += 1;
                }
                return Ok(());
            }
            let mut num = 1u64;
            while self.args.num_ops == 0 || num <= self.args.num_ops {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let op = self.generate();
                let path = self.pick_path(num);
                self.step(LoggedOp { num, path, op })?;
                done += 1;
                num += 1;
            }
            Ok(())
        })();
        let _ = self.ops_log.flush();
        if let Some(r) = &mut self.record {
            let _ = r.flush();
        }
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                if !self.args.quiet {
                    let counts: Vec<String> = self
                        .counts
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect();
                    println!(
                        "rdlmfs-fsx: {done} operations in {secs:.2} s ({:.0} ops/s), all checks passed [{}]",
                        done as f64 / secs.max(1e-9),
                        counts.join(", ")
                    );
                }
                EXIT_OK
            }
            Err(f) => self.report(f),
        }
    }

    /// Prints the failure, saves good and bad copies and the op log, and
    /// prints the commands that reproduce it.
    fn report(&mut self, f: Failure) -> i32 {
        let mut out = String::new();
        out.push_str(&format!(
            "rdlmfs-fsx: FAILED (exit {}) with seed {}\n{}\n",
            f.code, self.seed, f.message
        ));
        out.push_str(&format!(
            "last {} operations (op path name args):\n",
            self.recent.len()
        ));
        for l in &self.recent {
            let mark = if l.op.modifies() { "W" } else { " " };
            out.push_str(&format!(
                "  {mark} {l}    [{}]\n",
                self.args.paths[l.path].display()
            ));
        }
        let good = self.log_dir.join(format!("{}.fsxgood", self.base));
        let bad = self.log_dir.join(format!("{}.fsxbad", self.base));
        let failed_ops = self.log_dir.join(format!("{}.fsxfail.ops", self.base));
        let log = self.log_dir.join(format!("{}.fsxlog", self.base));
        if let Err(e) = std::fs::write(&good, &self.shadow.data) {
            out.push_str(&format!("cannot write {}: {e}\n", good.display()));
        }
        let p = f.path.unwrap_or(0);
        let actual_len = self.files[p]
            .metadata()
            .map(|m| m.len())
            .unwrap_or(self.shadow.len());
        match self.pread(p, 0, actual_len) {
            Ok(actual) => {
                if let Err(e) = std::fs::write(&bad, actual) {
                    out.push_str(&format!("cannot write {}: {e}\n", bad.display()));
                }
            }
            Err(e) => out.push_str(&format!(
                "cannot read the actual contents through path {p}: {e}\n"
            )),
        }
        if let Err(e) = std::fs::copy(&self.ops_log_path, &failed_ops) {
            out.push_str(&format!("cannot save the operation log: {e}\n"));
        }
        out.push_str(&format!(
            "expected contents: {}\nactual contents (through path {p}): {}\noperation log: {}\n",
            good.display(),
            bad.display(),
            failed_ops.display()
        ));
        out.push_str(&format!(
            "replay exactly:  {}\nrerun the seed:  {}\n",
            self.command_line(Some(&failed_ops)),
            self.command_line(None)
        ));
        eprint!("{out}");
        let _ = std::fs::write(&log, &out);
        f.code
    }

    /// This run's command line with the seed pinned, optionally replaying.
    fn command_line(&self, replay: Option<&Path>) -> String {
        let mut words: Vec<String> = Vec::new();
        let mut it = std::env::args();
        words.push(it.next().unwrap_or_else(|| "rdlmfs-fsx".into()));
        let takes_value = ["-S", "--seed", "--replay-ops", "--replay", "--record-ops"];
        let mut skip = false;
        for a in it {
            if skip {
                skip = false;
                continue;
            }
            if takes_value.contains(&a.as_str()) {
                skip = true;
                continue;
            }
            if takes_value.iter().any(|t| a.starts_with(&format!("{t}=")))
                || (a.starts_with("-S") && a.len() > 2 && !a.starts_with("--"))
            {
                continue;
            }
            words.push(a);
        }
        let mut extra = vec!["-S".to_string(), self.seed.to_string()];
        if let Some(r) = replay {
            extra.push("--replay-ops".into());
            extra.push(r.display().to_string());
        }
        // Right after the program name: the rest of the line stays intact.
        words.splice(1..1, extra);
        words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Reads a saved operation log.
pub fn read_ops(path: &Path) -> Result<Vec<LoggedOp>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ops = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(l) =
            parse_line(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?
        {
            ops.push(l);
        }
    }
    Ok(ops)
}

/// Entry point of the binary.
pub fn main_with(args: Args) -> i32 {
    match Fsx::new(args) {
        Ok(mut f) => f.run(),
        Err(f) => {
            eprintln!("rdlmfs-fsx: {}", f.message);
            f.code
        }
    }
}
