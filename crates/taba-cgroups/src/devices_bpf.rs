//! The cgroup v2 device controller: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup, which the kernel
//! runs on every open and mknod of a device node by a process in it. The
//! program is generated from the same rules as v1's `devices.allow`
//! (`"c 1:3 rwm"`, `"c 136:* rwm"`, `"b *:* m"`): allow when one rule
//! matches, deny otherwise.
//!
//! The program reads `struct bpf_cgroup_dev_ctx { u32 access_type; u32
//! major; u32 minor; }`, where `access_type` is `(access << 16) | type`.

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::CgroupError;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

/// One parsed rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    kind: Option<i32>,
    major: Option<i32>,
    minor: Option<i32>,
    access: i32,
}

fn parse_rule(rule: &str) -> Result<Rule, String> {
    let bad = || format!("device rule {rule:?} is not \"TYPE MAJOR:MINOR ACCESS\"");
    let mut parts = rule.split_whitespace();
    let (Some(kind), Some(nums), Some(access), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let kind = match kind {
        "a" => None,
        "c" => Some(DEV_CHAR),
        "b" => Some(DEV_BLOCK),
        _ => return Err(bad()),
    };
    let (major, minor) = nums.split_once(':').ok_or_else(bad)?;
    let num = |s: &str| -> Result<Option<i32>, String> {
        if s == "*" {
            Ok(None)
        } else {
            s.parse().map(Some).map_err(|_| bad())
        }
    };
    let mut acc = 0;
    for c in access.chars() {
        acc |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return Err(bad()),
        };
    }
    Ok(Rule {
        kind,
        major: num(major)?,
        minor: num(minor)?,
        access: acc,
    })
}

/// The program allowing exactly `allow` (v1 `devices.allow` syntax).
pub fn program(allow: &[&str]) -> Result<Vec<Insn>, String> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),        // r2 = access_type
        insn(ALU32_AND_K, 2, 0, 0, 0xffff), // r2 = type
        insn(LDX_MEM_W, 3, 1, 0, 0),        // r3 = access_type
        insn(ALU32_RSH_K, 3, 0, 0, 16),     // r3 = access
        insn(LDX_MEM_W, 4, 1, 4, 0),        // r4 = major
        insn(LDX_MEM_W, 5, 1, 8, 0),        // r5 = minor
    ];
    for r in allow {
        let r = parse_rule(r)?;
        // Each check jumps past the rest of this rule's block on mismatch;
        // the block ends with "allow". Built backwards to know the offsets.
        let mut checks: Vec<Vec<Insn>> = Vec::new();
        if let Some(k) = r.kind {
            checks.push(vec![insn(JMP_JNE_K, 2, 0, 0, k)]);
        }
        if r.access != ACC_READ | ACC_WRITE | ACC_MKNOD {
            // The access asked for must be a subset of the rule's.
            checks.push(vec![
                insn(ALU32_MOV_X, 1, 3, 0, 0),
                insn(ALU32_AND_K, 1, 0, 0, r.access),
                insn(JMP_JNE_X, 1, 3, 0, 0),
            ]);
        }
        if let Some(m) = r.major {
            checks.push(vec![insn(JMP_JNE_K, 4, 0, 0, m)]);
        }
        if let Some(m) = r.minor {
            checks.push(vec![insn(JMP_JNE_K, 5, 0, 0, m)]);
        }
        let allow_tail = [insn(ALU64_MOV_K, 0, 0, 0, 1), insn(JMP_EXIT, 0, 0, 0, 0)];
        let total: usize = checks.iter().map(Vec::len).sum::<usize>() + allow_tail.len();
        let mut emitted = 0;
        for c in checks {
            let n = c.len();
            for (i, mut ins) in c.into_iter().enumerate() {
                if i + 1 == n {
                    // Jump over everything after this instruction in the block.
                    ins.off = (total - emitted - n) as i16;
                }
                p.push(ins);
            }
            emitted += n;
        }
        p.extend(allow_tail);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    Ok(p)
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zero-filled `union bpf_attr` prefix of 128 bytes
    // holding the fields of `cmd`; pointers in it point at live buffers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

/// Load the program for `allow` and attach it to the cgroup v2 directory
/// `dir`. The attachment lives as long as the cgroup.
pub fn attach(dir: &Path, allow: &[&str]) -> Result<(), CgroupError> {
    let fail = |what: &str, source: std::io::Error| CgroupError::Write {
        path: dir.to_path_buf(),
        value: format!("device filter ({what})"),
        source,
    };
    let prog = program(allow).map_err(|e| {
        fail(
            "rules",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })?;
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_CGROUP_DEVICE as u64 | ((prog.len() as u64) << 32);
    attr[1] = prog.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32); // log_level 1, log_size
    attr[4] = log.as_mut_ptr() as u64;
    let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let text = String::from_utf8_lossy(&log);
        let text = text.trim_end_matches('\0').trim();
        let e = if text.is_empty() {
            e
        } else {
            std::io::Error::new(e.kind(), format!("{e}; verifier: {text}"))
        };
        fail("load", e)
    })?;
    // SAFETY: the kernel just returned this fd to us.
    let prog_fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let cg = std::fs::File::open(dir).map_err(|e| fail("open cgroup", e))?;
    let mut attr = [0u64; 16];
    attr[0] = cg.as_raw_fd() as u64 | ((prog_fd.as_raw_fd() as u64) << 32);
    attr[1] = BPF_CGROUP_DEVICE as u64 | ((BPF_F_ALLOW_MULTI as u64) << 32);
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| fail("attach", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_compile_to_checks_with_jumps_over_their_block() {
        let p = program(&["c 1:3 rwm"]).unwrap();
        // 6 loads, type + major + minor checks, allow (2), deny (2).
        assert_eq!(p.len(), 6 + 3 + 2 + 2);
        assert_eq!(p[6], insn(JMP_JNE_K, 2, 0, 4, DEV_CHAR));
        assert_eq!(p[7], insn(JMP_JNE_K, 4, 0, 3, 1));
        assert_eq!(p[8], insn(JMP_JNE_K, 5, 0, 2, 3));
        let p = program(&["b *:* m"]).unwrap();
        // type, access (3 insns), allow: the access jump skips the allow.
        assert_eq!(p[6], insn(JMP_JNE_K, 2, 0, 5, DEV_BLOCK));
        assert_eq!(p[9], insn(JMP_JNE_X, 1, 3, 2, 0));
        assert!(program(&["x 1:3 rwm"]).is_err());
        assert!(program(&["c 1:3"]).is_err());
        assert!(program(&["c one:3 r"]).is_err());
    }

    /// Attaching to a directory of a fake tree (not a cgroup) is a clear
    /// error naming the directory, not a silent success.
    #[test]
    fn attach_to_a_fake_tree_fails_clearly() {
        let d = tempfile::tempdir().unwrap();
        let e = attach(d.path(), &["c 1:3 rwm"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("device filter"), "{msg}");
        assert!(msg.contains(&d.path().display().to_string()), "{msg}");
    }
}
