//! The x86_64 guest on supermachine's KVM machine ([`crate::vm::kvm_x86`]), as the guest sees
//! it: one vCPU in virtual-wire mode on the 8259 PIC with the PIT as its clockevent, no
//! hypervisor bit, supermachine's e820 and device IRQs, its command line whole, its clock from
//! `supermachine.host_time`; and the modes around it: two vCPUs on supermachine's MP table,
//! the longest command line the kernel takes, and the smallest RAM its initrd placement
//! allows.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};

use super::{check, guest_secs, host_time_applied, stdout};
use crate::progress;
use crate::spec::Arch;
use crate::vm::kvm_x86::{self, KernelWindow, CMDLINE_MAX};
use crate::vm::{self, cmdline_words, Guest, Options};

/// Checks on the main x86_64 guest (1 vCPU, a root disk and vsock).
pub fn checks(g: &Guest) -> Result<()> {
    check(
        "supermachine's 1-vCPU mode: virtual wire on the 8259 PIC, the PIT as clockevent, no local APIC timer, no hypervisor bit",
        || {
            let text = stdout(
                g,
                &format!(
                    "dmesg | grep -E 'virtual wire|tsc: Unable|TSC unstable'; \
                     grep -E '^ *0:|LOC:' /proc/interrupts; \
                     grep -c hypervisor /proc/cpuinfo; \
                     cat {}",
                    vm::CLOCKSOURCE_FILE
                ),
            )?;
            ensure!(
                text.contains("Switch to virtual wire mode setup with no configuration"),
                "not in virtual-wire mode:\n{text}"
            );
            let timer = interrupts_row(&text, "0");
            ensure!(
                timer.contains("XT-PIC") && timer.contains("timer"),
                "the timer is not IRQ 0 on the PIC:\n{text}"
            );
            let loc = interrupts_row(&text, "LOC");
            ensure!(
                loc.split_whitespace().nth(1) == Some("0"),
                "the local APIC timer ticked: {loc}"
            );
            ensure!(
                text.lines().any(|l| l == "0"),
                "the CPU has the hypervisor bit:\n{text}"
            );
            // The TSC, calibrated on the PIT, with no kvm-clock. Under TCG a busy host can
            // deschedule the vCPU through the calibration window: the kernel says so and falls
            // back to jiffies (the timekeeping checks hold on either). The clocksource watchdog,
            // whose only reference here is jiffies counted from those same PIT ticks, is off
            // (assets/kernel/patches/x86_64/0003): it once marked a calibrated TSC unstable in
            // 1 boot of 4.
            let clock = text.lines().last().unwrap_or("");
            ensure!(
                !text.contains("due to clocksource watchdog"),
                "the clocksource watchdog judged the TSC (CONFIG_X86_TSC_WATCHDOG is on?):\n{text}"
            );
            let disturbed = text.contains("tsc: Unable to calibrate against PIT");
            ensure!(
                clock.starts_with("tsc") || (disturbed && clock == "refined-jiffies"),
                "clocksource {clock:?}:\n{text}"
            );
            if disturbed {
                progress!("e2e:   the TSC against the PIT disturbed by host load; clocksource {clock}");
            }
            Ok(())
        },
    )?;
    check(
        "supermachine's e820 (2 entries) and device IRQs: root disk 5, vsock 6, on the PIC",
        || {
            let text = stdout(
                g,
                "dmesg | grep -E 'BIOS-e820|Registering device virtio-mmio'; \
                 grep -E 'virtio' /proc/interrupts",
            )?;
            let e820: Vec<&str> = text.lines().filter(|l| l.contains("BIOS-e820")).collect();
            ensure!(
                e820.len() == 2
                    && e820[0].contains("0x0000000000000000-0x000000000009fbff] usable")
                    && e820[1].contains("0x0000000000100000-"),
                "not supermachine's e820:\n{text}"
            );
            for s in kvm_x86::plan(true, true, 0)? {
                let at = format!("at {:#x}-", s.base());
                let irq = format!("IRQ {}.", s.irq());
                ensure!(
                    text.lines().any(|l| l.contains(&at) && l.contains(&irq)),
                    "no device {s:?} at {at} on {irq}:\n{text}"
                );
                ensure!(
                    interrupts_row(&text, &s.irq().to_string()).contains("XT-PIC"),
                    "IRQ {} is not a PIC line:\n{text}",
                    s.irq()
                );
            }
            Ok(())
        },
    )?;
    check(
        "an absent port reads 0, as under supermachine's KVM: the boot's RTC read does not wait out 1 s",
        || {
            let text = stdout(g, "dmesg | grep -c 'Unable to read current time from RTC' || true")?;
            ensure!(text.trim() == "0", "the kernel waited for a CMOS RTC that is not there");
            Ok(())
        },
    )?;
    check(
        "the command line reaches the kernel as the VMM wrote it, nothing built in before it",
        || {
            let line = stdout(g, "cat /proc/cmdline")?;
            ensure!(
                line.starts_with("console=ttyS0 panic=-1 "),
                "/proc/cmdline: {line}"
            );
            Ok(())
        },
    )?;
    timekeeping(g)
}

/// Guest time against host time: `sleep 1`, the clock's rate, `host_time`, and `sync_time`
/// correcting a clock set back.
fn timekeeping(g: &Guest) -> Result<()> {
    check(
        "`sleep 1` lasts 1 s ± 5% and the guest clock keeps the host's pace",
        || {
            // The guest's own measure of `sleep 1` (the best of 3: a loaded host delays wake-ups,
            // it cannot shorten them).
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = stdout(
                    g,
                    "read a _ < /proc/uptime; sleep 1; read b _ < /proc/uptime; echo $a $b",
                )?;
                let v: Vec<f64> = t
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("uptime {t:?}"))?;
                ensure!(v.len() == 2, "uptime {t:?}");
                best = best.min(v[1] - v[0]);
            }
            ensure!(
                (0.99..=1.05).contains(&best),
                "`sleep 1` took {best:.3} s of guest time"
            );
            // The guest clock's rate, over about 4 s of host time, each end bracketed by the
            // round trip that read it.
            let read = || -> Result<(f64, Instant, Instant)> {
                let before = Instant::now();
                let up: f64 = stdout(g, "cut -d' ' -f1 /proc/uptime")?.trim().parse()?;
                Ok((up, before, Instant::now()))
            };
            let (u0, b0, a0) = read()?;
            std::thread::sleep(Duration::from_secs(4));
            let (u1, b1, a1) = read()?;
            let guest = u1 - u0;
            let (least, most) = ((b1 - a0).as_secs_f64(), (a1 - b0).as_secs_f64());
            ensure!(
                guest >= least * 0.95 - 0.01 && guest <= most * 1.05 + 0.01,
                "the guest counted {guest:.2} s while the host counted {least:.2}..{most:.2} s"
            );
            Ok(())
        },
    )?;
    check(
        "no RTC: the clock comes from supermachine.host_time; sync_time corrects a clock set back",
        || {
            let rtc = stdout(g, "ls /sys/class/rtc | wc -l")?;
            ensure!(rtc.trim() == "0", "the guest has an RTC: {rtc}");
            host_time_applied(g)?;
            let host = crate::util::unix_now_secs() as i64;
            stdout(g, &format!("date -s @{} > /dev/null", host - 86_400))?;
            let back = guest_secs(g)?;
            ensure!(host - back > 80_000, "the clock was not set back: {back}");
            g.client.sync_time(SystemTime::now())?;
            let now = guest_secs(g)?;
            let host = crate::util::unix_now_secs() as i64;
            ensure!(
                (now - host).abs() <= 2,
                "after sync_time the guest says {now}, the host {host}"
            );
            Ok(())
        },
    )
}

/// Two vCPUs: supermachine writes its MP table, so the guest runs on the IO-APIC with the
/// local APIC timer (its clock from `CONFIG_X86_LAPIC_TIMER_HZ`), both CPUs online, and
/// keeps time.
pub fn mp_table_check() -> Result<()> {
    let g = vm::boot(&Options {
        arch: Arch::X86_64,
        cpus: 2,
        ..Options::default()
    })?;
    let result = check(
        "2 vCPUs on supermachine's MP table: IO-APIC, local APIC timers ticking on both CPUs",
        || {
            let text = stdout(
                &g,
                "grep -c ^processor /proc/cpuinfo; \
                 dmesg | grep -E 'Intel MultiProcessor|virtual wire'; \
                 grep -E 'IO-APIC|LOC:' /proc/interrupts",
            )?;
            ensure!(text.lines().next() == Some("2"), "not 2 CPUs:\n{text}");
            ensure!(
                !text.contains("virtual wire"),
                "virtual-wire mode with an MP table:\n{text}"
            );
            ensure!(text.contains("IO-APIC"), "no IO-APIC interrupts:\n{text}");
            let loc = interrupts_row(&text, "LOC");
            let ticks: Vec<u64> = loc
                .split_whitespace()
                .skip(1)
                .take(2)
                .filter_map(|n| n.parse().ok())
                .collect();
            ensure!(
                ticks.len() == 2 && ticks.iter().all(|&n| n > 0),
                "local timers: {loc}"
            );
            Ok(())
        },
    )
    .and_then(|()| timekeeping(&g));
    g.finish(result)
}

/// The longest command line the kernel takes (2047 characters), built as supermachine builds
/// its longest: 3 volumes, 13 virtio-fs shares and the balloon (every IRQ up to 23), and the
/// TSI token last; every word reaches `/proc/cmdline`. A longer line is refused by the rig.
/// The rig's own words ([`cmdline_words::rig_words`], 29 characters) are part of the 2047,
/// so supermachine's words here reach 2017; supermachine's own machine would not add them.
pub fn cmdline_headroom_check() -> Result<()> {
    check(
        "a 2047-character supermachine command line reaches the kernel whole, the token last \
         (taken by TSI and hidden)",
        || {
            // The rig's own words come first among the extra ones (`Config::extra_words`).
            let base = kvm_x86::command_line(true, true, 0, &cmdline_words::rig_words())?;
            let words = longest_words(base.len())?;
            let g = vm::boot(&Options {
                arch: Arch::X86_64,
                cmdline: words.clone(),
                ..Options::default()
            })?;
            let seen = stdout(&g, "cat /proc/cmdline; echo ===; dmesg");
            let seen = g.finish(seen)?;
            let (line, log) = seen.split_once("\n===\n").context("no separator")?;
            // The token, the last word, goes with the blank before it.
            ensure!(
                !line.ends_with(' '),
                "/proc/cmdline ends with a blank where the token was: {line:?}"
            );
            // TSI takes the token (last) and removes it from what userspace reads; a token cut
            // short by the limit would be refused, and the kernel would say so.
            let token = words.last().expect("words");
            ensure!(token.starts_with("supermachine.tsi_token="), "{token}");
            ensure!(
                line.len() == CMDLINE_MAX - 1 - token.len(),
                "/proc/cmdline is {} characters, not {CMDLINE_MAX} less the token word",
                line.len()
            );
            ensure!(
                !log.contains("tsi_token is not"),
                "the kernel refused the token (cut short?):\n{log}"
            );
            // The boot wrote its own `supermachine.host_time=` (the clock may have ticked since
            // `base` was built): compare with that word's value masked.
            let mask = |l: &str| -> String {
                l.split(' ')
                    .map(|w| match w.strip_prefix("supermachine.host_time=") {
                        Some(_) => "supermachine.host_time=S",
                        None => w,
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let written = format!("{base} {}", words[..words.len() - 1].join(" "));
            ensure!(
                mask(line) == mask(&written),
                "/proc/cmdline differs from the line written:\n{line}\n{written}"
            );
            // One more character is refused before QEMU starts, naming the limit.
            let mut over = words.clone();
            over[0].push('x');
            let e = vm::boot(&Options {
                arch: Arch::X86_64,
                cmdline: over,
                ..Options::default()
            })
            .err()
            .context("a 2048-character line booted")?;
            ensure!(format!("{e:#}").contains("2047"), "{e:#}");
            Ok(())
        },
    )
}

/// supermachine's words for 3 volumes, 13 shares, the balloon and the token
/// (`kvm/run.rs:755-803`, its addresses for a guest under 3 GiB), the mount paths padded so
/// that `base` plus them is [`CMDLINE_MAX`] characters.
fn longest_words(base: usize) -> Result<Vec<String>> {
    const MMIO: u64 = 0xd000_0000;
    let build = |pad: usize| -> Vec<String> {
        let path = |kind: &str, i: usize| format!("/{kind}{i}{}", "p".repeat(pad));
        let mut w = Vec::new();
        for i in 0..3 {
            w.push(format!(
                "virtio_mmio.device=0x1000@{:#x}:{}",
                MMIO + 0x2000 + 0x1000 * i as u64,
                7 + i
            ));
            w.push(format!(
                "sm.volume=/dev/vd{}:{}",
                (b'b' + i as u8) as char,
                path("v", i)
            ));
        }
        for i in 0..13 {
            w.push(format!(
                "virtio_mmio.device=0x1000@{:#x}:{}",
                MMIO + 0x10_0000 + 0x1000 * i as u64,
                10 + i
            ));
            w.push(format!("sm.virtiofs=share{i}:{}", path("s", i)));
        }
        w.push(format!(
            "virtio_mmio.device=0x1000@{:#x}:23",
            MMIO + 0x20_0000
        ));
        w.push(format!(
            "supermachine.tsi_token={}",
            "0123456789abcdef".repeat(4)
        ));
        w
    };
    let len = |w: &[String]| base + 1 + w.join(" ").len();
    let unpadded = len(&build(0));
    ensure!(
        unpadded <= CMDLINE_MAX,
        "the words alone take {unpadded} characters"
    );
    let room = CMDLINE_MAX - unpadded;
    // 16 paths share the padding; the first takes the remainder.
    let mut w = build(room / 16);
    let short = CMDLINE_MAX - len(&w);
    let first = w
        .iter()
        .position(|x| x.starts_with("sm.volume="))
        .expect("a volume");
    w[first].push_str(&"q".repeat(short));
    ensure!(len(&w) == CMDLINE_MAX, "built {} characters", len(&w));
    Ok(w)
}

/// The smallest RAM supermachine's initrd placement allows for our kernel and the initramfs
/// supermachine builds from our busybox and agent (the README's minimum): the rig refuses
/// 1 MiB less (supermachine would boot a guest whose initrd the kernel overwrites), and a guest
/// of that size boots and execs.
pub fn smallest_ram_check() -> Result<()> {
    check(
        "the smallest RAM supermachine's initrd placement allows: refused 1 MiB below, boots at it",
        || {
            let assets = vm::extract_assets(Arch::X86_64)?;
            let initrd = vm::initramfs(&assets, None)?;
            let min = KernelWindow::read(&assets.kernel)?.min_mem_mib(initrd.len() as u64);
            let refused = vm::boot(&Options {
                arch: Arch::X86_64,
                mem_mib: min - 1,
                ..Options::default()
            })
            .err()
            .context("1 MiB below the minimum booted")?;
            ensure!(
                format!("{refused:#}").contains(&format!("at least {min} MiB")),
                "{refused:#}"
            );
            let g = vm::boot(&Options {
                arch: Arch::X86_64,
                mem_mib: min,
                ..Options::default()
            })?;
            let r = stdout(&g, "echo ok");
            let r = g.finish(r)?;
            ensure!(r == "ok\n");
            progress!(
                "e2e:   the initrd placement needs {min} MiB, and a guest of that size execs"
            );
            Ok(())
        },
    )
}

/// The `/proc/interrupts` row of `name` (an IRQ number or `LOC`) in `text`, or "".
fn interrupts_row<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.trim_start()
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with(':'))
        })
        .unwrap_or("")
}
