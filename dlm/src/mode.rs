//! Lock modes and the VMS compatibility matrix.
//!
//! Owns nothing but the six modes and which pairs may be held at once; every
//! grant decision in the crate goes through [`Mode::compatible`].

use std::fmt;

/// The six VMS lock modes, weakest first. The numeric order is the one the
/// DLM uses to compare modes ("stronger" means a larger number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Null: holds nothing, keeps the lock (and its LVB access) alive.
    NL = 0,
    /// Concurrent read.
    CR = 1,
    /// Concurrent write.
    CW = 2,
    /// Protected read (shared).
    PR = 3,
    /// Protected write (update; readers with CR allowed).
    PW = 4,
    /// Exclusive.
    EX = 5,
}

pub const ALL_MODES: [Mode; 6] = [Mode::NL, Mode::CR, Mode::CW, Mode::PR, Mode::PW, Mode::EX];

/// `COMPAT[a][b]`: may locks in modes `a` and `b` be granted at once.
const COMPAT: [[bool; 6]; 6] = [
    //        NL     CR     CW     PR     PW     EX
    /* NL */
    [true, true, true, true, true, true],
    /* CR */ [true, true, true, true, true, false],
    /* CW */ [true, true, true, false, false, false],
    /* PR */ [true, true, false, true, false, false],
    /* PW */ [true, true, false, false, false, false],
    /* EX */ [true, false, false, false, false, false],
];

impl Mode {
    pub fn compatible(self, other: Mode) -> bool {
        COMPAT[self as usize][other as usize]
    }

    /// PR and CW: neither protects what the other does (CW admits other CW
    /// writers, PR admits other readers), so a lock moving between them
    /// passes through no mode that covers both. Every other pair is
    /// ordered, and a stronger mode is compatible with less.
    pub fn incomparable(self, other: Mode) -> bool {
        matches!((self, other), (Mode::PR, Mode::CW) | (Mode::CW, Mode::PR))
    }

    /// Whether a holder in this mode may write the lock value block.
    pub fn writes_lvb(self) -> bool {
        matches!(self, Mode::PW | Mode::EX)
    }

    pub fn from_u8(v: u8) -> Option<Mode> {
        ALL_MODES.get(usize::from(v)).copied()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.to_ascii_uppercase().as_str() {
            "NL" => Ok(Mode::NL),
            "CR" => Ok(Mode::CR),
            "CW" => Ok(Mode::CW),
            "PR" => Ok(Mode::PR),
            "PW" => Ok(Mode::PW),
            "EX" => Ok(Mode::EX),
            _ => Err(format!(
                "unknown lock mode {s:?} (expected NL, CR, CW, PR, PW or EX)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_is_symmetric_and_matches_vms() {
        for a in ALL_MODES {
            for b in ALL_MODES {
                assert_eq!(a.compatible(b), b.compatible(a), "{a} vs {b}");
            }
            assert!(Mode::NL.compatible(a));
        }
        // The rows that matter most to a file system.
        assert!(Mode::PR.compatible(Mode::PR));
        assert!(!Mode::PR.compatible(Mode::PW));
        assert!(!Mode::EX.compatible(Mode::CR));
        assert!(Mode::CW.compatible(Mode::CW));
        assert!(!Mode::CW.compatible(Mode::PR));
        assert!(Mode::PW.compatible(Mode::CR));
        assert!(!Mode::PW.compatible(Mode::PW));
    }

    #[test]
    fn parse_and_print() {
        for m in ALL_MODES {
            assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
            assert_eq!(Mode::from_u8(m as u8), Some(m));
        }
        assert!("XX".parse::<Mode>().is_err());
        assert_eq!(Mode::from_u8(6), None);
    }
}
