//! How soon the agent answers: ours next to upstream's kernel, both booting our init and
//! agent (so the kernel is all that differs), one boot of each per round so that load which
//! comes and goes lands on both sides. Two figures:
//! - QEMU start → the agent's first answer, on the host's clock: what a user waits for here,
//!   where TCG's cost of translating code it meets for the first time weighs most;
//! - reset → the agent listening in virtual time (`-icount`): one nanosecond per guest
//!   instruction, so it counts what the guest itself does, plus its idle waits on the host at
//!   the host's pace; host load barely moves it (1 % with two busy loops on this host).
//!
//! Each with where its time goes, from the guest's own records: the kernel's `Run /init` log
//! line and the agent's ready file, written right after it starts to listen.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use supermachine_agent::protocol::{ExecRequest, READY_FILE};

use super::figure::Figure;
use super::guest::{bench_guest, BENCH_GUEST};
use super::median;
use crate::progress;
use crate::spec::Arch;
use crate::vm::{self, cmdline_words, Icount, Options};

/// The goal of both ratios, ours / upstream's kernel.
const GOAL: f64 = 0.5;

/// The kernel's log record of starting the init, which `bench-guest kmsg` finds in
/// `/dev/kmsg` with its timestamp. PID 1's start time in `/proc/1/stat` would not do: PID 1
/// is created before the initcalls run, and becomes the init only after them.
const RUN_INIT: &str = "Run /init as init process";

/// One boot, in seconds of guest uptime unless said otherwise.
#[derive(Clone, Copy)]
struct Boot {
    /// QEMU start → the agent's first answer, on the host's clock.
    ready: f64,
    /// At the first answer (`/proc/uptime`: centiseconds).
    answered: f64,
    /// At the kernel's `Run /init` record.
    run_init: f64,
    /// When the agent wrote its ready file (a file time: one tick's precision).
    listening: f64,
    /// How long before the kernel's clock started the guest's counter did (reset, loader,
    /// decompressor): only under icount, where the counter is virtual time from reset.
    before_clock: Option<f64>,
    /// Blocks of guest code TCG had translated by the first answer (`info jit`).
    blocks: Option<f64>,
}

/// The number `bench-guest ARGS` prints, in µs, as seconds.
fn guest_us(g: &vm::Guest, args: &[&str]) -> Result<f64> {
    let argv = std::iter::once(BENCH_GUEST).chain(args.iter().copied());
    let o = g.client.exec_output(&ExecRequest::new(argv))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let us: i64 = text.trim().parse().with_context(|| {
        format!(
            "bench-guest {}: `{}` ({})",
            args.join(" "),
            text.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        )
    })?;
    Ok(us as f64 / 1e6)
}

/// The "TB count" of QEMU's `info jit`: blocks of guest code translated so far.
fn translated_blocks(info_jit: &str) -> Option<f64> {
    info_jit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TB count"))
        .and_then(|n| n.trim().parse().ok())
}

/// Boots `kernel` (ours when `None`) and reads where its time went; `bin` is `bench-guest`.
fn boot(arch: Arch, kernel: Option<&Path>, bin: &[u8], icount: Icount) -> Result<Boot> {
    let g = vm::boot(&Options {
        arch,
        kernel: kernel.map(Path::to_path_buf),
        icount,
        ready_timeout: Some(Duration::from_secs(if icount == Icount::Off {
            60
        } else {
            240
        })),
        ..Options::default()
    })?;
    // Before the bench's own execs make TCG translate more.
    let blocks = match icount {
        Icount::Off => {
            g.vm.monitor()
                .and_then(|mut m| m.hmp("info jit"))
                .ok()
                .and_then(|t| translated_blocks(&t))
        }
        _ => None,
    };
    let parts = (|| -> Result<Boot> {
        g.client.write_file(BENCH_GUEST, 0o755, bin)?;
        let before_clock = match icount {
            Icount::Off => None,
            _ => Some(guest_us(&g, &["counter"])?),
        };
        Ok(Boot {
            ready: g.ready_after.as_secs_f64(),
            answered: g
                .ready_uptime
                .as_secs_f64()
                .min(g.ready_after.as_secs_f64()),
            run_init: guest_us(&g, &["kmsg", RUN_INIT])?,
            listening: guest_us(&g, &["mtime", READY_FILE])?,
            before_clock,
            blocks,
        })
    })();
    g.finish(parts)
}

/// Rounds of one boot of ours and one of the anchor's, under `icount`. The anchor's boots stop
/// at its first failure, which is returned beside ours.
fn rounds(
    arch: Arch,
    anchor: Option<&Path>,
    n: usize,
    icount: Icount,
) -> Result<(Vec<Boot>, Vec<Boot>, Option<String>)> {
    let bin = bench_guest(arch)?;
    let (mut ours, mut theirs, mut failed) = (vec![], vec![], None);
    for i in 0..n {
        progress!(
            "bench: {} readiness round {}/{n} ({icount:?})",
            arch.name(),
            i + 1
        );
        ours.push(boot(arch, None, &bin, icount)?);
        if failed.is_none() {
            match super::anchor_or_note(anchor, |k| boot(arch, Some(k), &bin, icount)) {
                (Some(b), _) => theirs.push(b),
                (None, why) => failed = why,
            }
        }
    }
    Ok((ours, theirs, failed))
}

/// The median of `f` over `boots`.
fn med(boots: &[Boot], f: impl Fn(&Boot) -> f64) -> f64 {
    median(&mut boots.iter().map(f).collect::<Vec<_>>())
}

/// A figure of rounds (ours, anchor) by `value`, or ours alone with why the anchor is missing.
fn figure(
    id: &str,
    arch: Arch,
    what: &str,
    (ours, theirs, failed): &(Vec<Boot>, Vec<Boot>, Option<String>),
    value: &dyn Fn(&Boot) -> f64,
) -> Figure {
    let anchor = "upstream kernel, our init + agent";
    let a = Some(arch.name().to_string());
    match failed {
        None => {
            let pairs: Vec<(f64, f64)> = ours
                .iter()
                .zip(theirs)
                .map(|(o, t)| (value(o), value(t)))
                .collect();
            Figure::sampled(id, a, what, anchor, &pairs, true, Some(GOAL))
        }
        Some(why) => Figure::new(id, a, what, med(ours, value), anchor, None, true).note(why),
    }
}

/// "1 round", "3 rounds".
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Appends `more` to the figure's note.
fn with_note(f: Figure, more: String) -> Figure {
    let note = if f.note.is_empty() {
        more
    } else {
        format!("{}; {more}", f.note)
    };
    f.note(note)
}

/// Both readiness figures for `arch`: `n` rounds of boots on the host's clock, and `icount_n`
/// in virtual time.
pub fn figures(
    arch: Arch,
    anchor: Option<&Path>,
    (n, icount_n): (usize, usize),
    accel_note: String,
) -> Result<Vec<Figure>> {
    let wall = rounds(arch, anchor, n, Icount::Off)?;
    let counted = rounds(arch, anchor, icount_n, Icount::IdleAtHostPace)?;
    let from_reset = |b: &Boot| b.listening + b.before_clock.unwrap_or(f64::NAN);
    let split = |b: &[Boot]| {
        format!(
            "{:.2} s QEMU start -> guest clock, {:.2} s kernel to its `Run /init` record, {:.2} s \
             init -> agent listening (its ready file), {:.2} s listening -> first answer",
            med(b, |b| b.ready - b.answered),
            med(b, |b| b.run_init),
            med(b, |b| b.listening - b.run_init),
            med(b, |b| b.answered - b.listening),
        )
    };
    let blocks = |b: &[Boot]| {
        let mut v: Vec<f64> = b.iter().filter_map(|b| b.blocks).collect();
        (v.len() == b.len() && !v.is_empty()).then(|| median(&mut v))
    };
    // Ours over the anchor's virtual time to the agent listening.
    let virtual_ratio = (!counted.0.is_empty() && counted.2.is_none())
        .then(|| med(&counted.0, from_reset) / med(&counted.1, from_reset));
    let mut note = format!(
        "{accel_note}; {}, one boot of each kernel per round; medians: ours: {}",
        plural(n, "round"),
        split(&wall.0)
    );
    if wall.2.is_none() {
        note += &format!("; upstream kernel: {}", split(&wall.1));
        // Both boot our init and agent: the kernel is all that differs, and what the ratio
        // could reach if ours took no time shows how far a kernel can move it.
        let up = med(&wall.1, |b| b.ready);
        note += &format!(
            "; were our kernel's part (its clock's start to `Run /init`) to take no time, ours \
             would be {:.2}× (the same QEMU start and userspace over the anchor's total)",
            med(&wall.0, |b| b.ready - b.run_init) / up
        );
        if let (Some(o), Some(t), Some(i)) = (blocks(&wall.0), blocks(&wall.1), virtual_ratio) {
            note += &format!(
                "; by the first answer TCG had translated {o:.0} blocks of guest code on ours, \
                 {t:.0} on the anchor's ({:.2}×), a cost per distinct block that hardware does \
                 not have, while ours took {i:.2}× the anchor's virtual time, mostly guest \
                 instructions, to the agent listening (next row)",
                o / t,
            );
        }
        note += &format!(
            "; the anchor's kernel ignores `{}` and sets up QEMU's 1024-entry queues, where \
             supermachine's transport would give it {}",
            cmdline_words::queue_num_max(),
            cmdline_words::QUEUE_SIZE,
        );
    }
    let ready = with_note(
        figure(
            "agent_ready",
            arch,
            "QEMU start -> agent answers (s, median)",
            &wall,
            &|b| b.ready,
        ),
        note,
    );

    let split = |b: &[Boot]| {
        format!(
            "{:.3} s reset -> kernel clock (loader, decompressor), {:.3} s kernel to `Run \
             /init`, {:.3} s init -> agent listening",
            med(b, |b| b.before_clock.unwrap_or(f64::NAN)),
            med(b, |b| b.run_init),
            med(b, |b| b.listening - b.run_init),
        )
    };
    let mut note = format!(
        "`-icount {}`: 1 ns per guest instruction, idle time at the host's pace \
         (skipping it, aarch64's init-oci, which waits on the host while it boots, read 1.99 s \
         instead of 0.07 s), 1 vCPU; {}; the agent's ready file's time plus the guest \
         counter's lead on the kernel's clock; medians: ours: {}",
        Icount::IdleAtHostPace.option().unwrap_or_default(),
        plural(icount_n, "round"),
        split(&counted.0)
    );
    if counted.2.is_none() {
        note += &format!("; upstream kernel: {}", split(&counted.1));
    }
    let listening = with_note(
        figure(
            "agent_listening_icount",
            arch,
            "reset -> agent listening, virtual time (s, icount)",
            &counted,
            &from_reset,
        ),
        note,
    );
    Ok(vec![ready, listening])
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_translated_blocks_of_info_jit() {
        let text = "Translation buffer state:\ngen code size       39385043/1073736704\n\
                    TB count            69571\nTB avg target size  16 max=504 bytes\n";
        assert_eq!(super::translated_blocks(text), Some(69571.0));
        assert_eq!(super::translated_blocks("TCG is not in use"), None);
    }
}
