//! The seccomp program itself: the system call number is looked up by binary search over ranges of
//! numbers, each range with one rule, so any call is decided in about 2·log2(ranges) instructions.
//!
//! Why not seccompiler's own code generator: it emits one compare per system call, linearly. With a
//! real allowlist (~330 calls) that is ~1,500 instructions, and when a filter is installed the kernel
//! emulates it for every system call number to fill its per-syscall "always allowed" cache: that
//! cost ~0.7 ms per job here. The search tree installs in a few microseconds. seccompiler still
//! provides the instruction type and installs the program.

use seccompiler::{sock_filter, BpfProgram};

// Classic BPF opcodes (linux/bpf_common.h).
/// BPF_LD | BPF_W | BPF_ABS.
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x05 | 0x10;
const JMP_JGE_K: u16 = 0x05 | 0x30;
const JMP_JSET_K: u16 = 0x05 | 0x40;
const RET_K: u16 = 0x06;

// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// System call numbers at or above this are the x32 ABI (or invalid).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// What happens to one system call. Argument checks read the low 32 bits of the argument, as the
/// kernel does for `int` arguments (so high bits cannot smuggle a value past the check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Let it through.
    Allow,
    /// Fail with this errno.
    Errno(i32),
    /// Allowed unless argument `arg` has any bit of `mask` set.
    DenyBits {
        /// Argument index.
        arg: u8,
        /// Forbidden bits.
        mask: u32,
        /// Errno when a forbidden bit is set.
        errno: i32,
    },
    /// Allowed only when argument `arg` is one of `values`.
    AllowValues {
        /// Argument index.
        arg: u8,
        /// Accepted values.
        values: &'static [u32],
        /// Errno for any other value.
        errno: i32,
    },
    /// Allowed unless argument `arg` is one of `values`.
    DenyValues {
        /// Argument index.
        arg: u8,
        /// Refused values.
        values: &'static [u32],
        /// Errno for a refused value.
        errno: i32,
    },
}

/// A run of system call numbers `lo..=hi` sharing a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    lo: u32,
    hi: u32,
    rule: Rule,
}

/// Build the program: non-native architectures are killed, x32 numbers and every number without a
/// rule get `default`, the others their rule. `rules` must be sorted by number, without duplicates.
pub fn program(rules: &[(u32, Rule)], default: Rule) -> BpfProgram {
    let ranges = ranges(rules, default);
    let mut out = vec![
        stmt(LD_W_ABS, ARCH_OFFSET),
        jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR_OFFSET),
        jump(JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
    ];
    out.extend(leaf(default));
    search(&ranges, &mut out);
    out
}

/// Cover `0..X32_SYSCALL_BIT` with ranges, merging neighbours with the same plain rule.
fn ranges(rules: &[(u32, Rule)], default: Rule) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    let mut push = |lo: u32, hi: u32, rule: Rule| {
        let mergeable = matches!(rule, Rule::Allow | Rule::Errno(_));
        match out.last_mut() {
            Some(last) if mergeable && last.rule == rule && last.hi + 1 == lo => last.hi = hi,
            _ => out.push(Range { lo, hi, rule }),
        }
    };
    let mut next = 0u32;
    for &(nr, rule) in rules {
        if nr > next {
            push(next, nr - 1, default);
        }
        push(nr, nr, rule);
        next = nr + 1;
    }
    push(next, X32_SYSCALL_BIT - 1, default);
    out
}

/// Binary search: `if nr >= mid.lo goto right else left`, as `JGE; JA right; left...; right...`
/// (the long jump keeps every offset valid however large the subtrees are).
fn search(ranges: &[Range], out: &mut BpfProgram) {
    if let [only] = ranges {
        out.extend(leaf(only.rule));
        return;
    }
    let mid = ranges.len() / 2;
    let mut left = Vec::new();
    search(&ranges[..mid], &mut left);
    out.push(jump(JMP_JGE_K, ranges[mid].lo, 0, 1));
    out.push(stmt(JMP_JA, left.len() as u32));
    out.extend(left);
    search(&ranges[mid..], out);
}

fn leaf(rule: Rule) -> Vec<sock_filter> {
    let errno = |e: i32| stmt(RET_K, RET_ERRNO | (e as u32 & 0xffff));
    let allow = stmt(RET_K, RET_ALLOW);
    let load = |arg: u8| stmt(LD_W_ABS, ARGS_OFFSET + 8 * u32::from(arg));
    match rule {
        Rule::Allow => vec![allow],
        Rule::Errno(e) => vec![errno(e)],
        Rule::DenyBits {
            arg,
            mask,
            errno: e,
        } => {
            vec![load(arg), jump(JMP_JSET_K, mask, 0, 1), errno(e), allow]
        }
        Rule::AllowValues {
            arg,
            values,
            errno: e,
        } => {
            let mut code = vec![load(arg)];
            code.extend(equal_any(values));
            code.extend([errno(e), allow]);
            code
        }
        Rule::DenyValues {
            arg,
            values,
            errno: e,
        } => {
            let mut code = vec![load(arg)];
            code.extend(equal_any(values));
            code.extend([allow, errno(e)]);
            code
        }
    }
}

/// `JEQ v` for each value, jumping on a match to the second instruction after the list.
fn equal_any(values: &[u32]) -> Vec<sock_filter> {
    let n = values.len();
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| jump(JMP_JEQ_K, v, (n - i) as u8, 0))
        .collect()
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the opcodes above, to check decisions without a kernel.
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u32; 6]) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    acc = match i.k {
                        NR_OFFSET => nr,
                        ARCH_OFFSET => arch,
                        k => args[((k - ARGS_OFFSET) / 8) as usize],
                    }
                }
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K | JMP_JGE_K | JMP_JSET_K => {
                    let taken = match i.code {
                        JMP_JEQ_K => acc == i.k,
                        JMP_JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                RET_K => return i.k,
                other => panic!("unknown opcode {other:#x}"),
            }
        }
    }

    const PERSONAS: &[u32] = &[0, 8];
    const TIOC: &[u32] = &[0x5412];

    fn sample() -> BpfProgram {
        let rules = [
            (0, Rule::Allow),
            (1, Rule::Allow),
            (5, Rule::Errno(1)),
            (
                7,
                Rule::DenyBits {
                    arg: 0,
                    mask: 0x30,
                    errno: 1,
                },
            ),
            (
                9,
                Rule::AllowValues {
                    arg: 0,
                    values: PERSONAS,
                    errno: 13,
                },
            ),
            (
                16,
                Rule::DenyValues {
                    arg: 1,
                    values: TIOC,
                    errno: 1,
                },
            ),
            (400, Rule::Allow),
        ];
        program(&rules, Rule::Errno(38))
    }

    #[test]
    fn decides_every_rule_and_the_default() {
        let p = sample();
        let call = |nr, args| run(&p, AUDIT_ARCH_X86_64, nr, args);
        let none = [0; 6];
        assert_eq!(call(0, none), RET_ALLOW);
        assert_eq!(call(1, none), RET_ALLOW);
        assert_eq!(call(2, none), RET_ERRNO | 38);
        assert_eq!(call(5, none), RET_ERRNO | 1);
        assert_eq!(call(7, none), RET_ALLOW);
        assert_eq!(call(7, [0x10, 0, 0, 0, 0, 0]), RET_ERRNO | 1);
        assert_eq!(call(9, [8, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(9, [0x40000, 0, 0, 0, 0, 0]), RET_ERRNO | 13);
        assert_eq!(call(16, [0, 0x5412, 0, 0, 0, 0]), RET_ERRNO | 1);
        assert_eq!(call(16, [0, 0x541b, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(400, none), RET_ALLOW);
        assert_eq!(call(401, none), RET_ERRNO | 38);
        assert_eq!(call(X32_SYSCALL_BIT, none), RET_ERRNO | 38);
        assert_eq!(call(u32::MAX, none), RET_ERRNO | 38);
        assert_eq!(run(&p, 0x4000_0003, 0, none), RET_KILL_PROCESS);
    }

    #[test]
    fn ranges_cover_the_whole_space_without_gaps() {
        let r = ranges(
            &[(3, Rule::Allow), (4, Rule::Allow), (9, Rule::Errno(1))],
            Rule::Errno(38),
        );
        let spans: Vec<(u32, u32)> = r.iter().map(|r| (r.lo, r.hi)).collect();
        assert_eq!(
            spans,
            [(0, 2), (3, 4), (5, 8), (9, 9), (10, X32_SYSCALL_BIT - 1)]
        );
    }

    #[test]
    fn every_number_is_decided_by_a_short_path() {
        let rules: Vec<(u32, Rule)> = (0..460).step_by(2).map(|nr| (nr, Rule::Allow)).collect();
        let p = program(&rules, Rule::Errno(38));
        for nr in 0..470 {
            let expect = if nr % 2 == 0 && nr < 460 {
                RET_ALLOW
            } else {
                RET_ERRNO | 38
            };
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [0; 6]), expect, "nr {nr}");
        }
    }
}
