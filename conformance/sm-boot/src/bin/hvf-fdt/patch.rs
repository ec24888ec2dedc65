//! In-place patches of a flattened device tree for QEMU's `virt` machine: same-size value
//! rewrites in the structure block, so the rest of supermachine's tree stays byte-identical.

/// supermachine's GICv3 redistributor base (its `layout.rs`: `GICV3_REDIST_BASE`).
const SM_GICR: u64 = 0x0808_0000;
/// QEMU `virt`'s (`hw/arm/virt.c`: `VIRT_GIC_REDIST`).
const QEMU_GICR: u64 = 0x080A_0000;
/// The first virtio-mmio transport, and the stride, on both machines.
const VIRTIO_BASE: u64 = 0x0a00_0000;
const VIRTIO_STRIDE: u64 = 0x200;
/// The SPI of QEMU `virt`'s first virtio-mmio transport (`VIRT_MMIO` in `a15irqmap`).
const QEMU_VIRTIO_SPI: u64 = 16;
/// QEMU `virt` has 32 transports (`NUM_VIRTIO_TRANSPORTS`).
const QEMU_TRANSPORTS: u64 = 32;

const FDT_MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

fn be32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("device tree truncated at {at:#x}"))
}

fn be64(b: &[u8], at: usize) -> Result<u64, String> {
    Ok(u64::from(be32(b, at)?) << 32 | u64::from(be32(b, at + 4)?))
}

fn cstr(b: &[u8], at: usize) -> Result<&str, String> {
    let rest = b
        .get(at..)
        .ok_or_else(|| format!("string at {at:#x} past the end"))?;
    let len = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| format!("unterminated string at {at:#x}"))?;
    std::str::from_utf8(&rest[..len]).map_err(|e| format!("string at {at:#x}: {e}"))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One property: the node it sits in, its name, and where its value lies.
struct Prop {
    node: String,
    name: String,
    value: std::ops::Range<usize>,
}

/// Every property of the tree, in order.
fn props(dtb: &[u8]) -> Result<Vec<Prop>, String> {
    if be32(dtb, 0)? != FDT_MAGIC {
        return Err("not a flattened device tree (bad magic)".into());
    }
    let structs = be32(dtb, 8)? as usize;
    let strings = be32(dtb, 12)? as usize;
    let mut path: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut at = structs;
    loop {
        let token = be32(dtb, at)?;
        at += 4;
        match token {
            BEGIN_NODE => {
                let name = cstr(dtb, at)?;
                at = align4(at + name.len() + 1);
                path.push(name.to_string());
            }
            END_NODE => {
                path.pop()
                    .ok_or_else(|| format!("unbalanced END_NODE at {at:#x}"))?;
            }
            PROP => {
                let len = be32(dtb, at)? as usize;
                let name = cstr(dtb, strings + be32(dtb, at + 4)? as usize)?.to_string();
                let start = at + 8;
                if start + len > dtb.len() {
                    return Err(format!("property {name} runs past the end"));
                }
                out.push(Prop {
                    node: path.last().cloned().unwrap_or_default(),
                    name,
                    value: start..start + len,
                });
                at = align4(start + len);
            }
            NOP => {}
            END => return Ok(out),
            t => return Err(format!("unknown token {t:#x} at {:#x}", at - 4)),
        }
    }
}

fn put_be64(dtb: &mut [u8], at: usize, v: u64) {
    dtb[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn put_be32(dtb: &mut [u8], at: usize, v: u32) {
    dtb[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites the GICv3 redistributor base and every virtio-mmio SPI for QEMU `virt`; returns
/// one line per patch. Fails when the tree does not hold what supermachine writes.
pub fn for_qemu_virt(dtb: &mut [u8]) -> Result<Vec<String>, String> {
    let props = props(dtb)?;
    let mut done = Vec::new();
    let reg_of = |node: &str| {
        props
            .iter()
            .find(|p| p.node == node && p.name == "reg")
            .map(|p| p.value.clone())
    };
    for p in &props {
        if p.node.starts_with("intc@") && p.name == "reg" {
            // <GICD base, size, GICR base, size>, 64-bit cells.
            let gicr = p.value.start + 16;
            if p.value.len() != 32 || be64(dtb, gicr)? != SM_GICR {
                return Err(format!("{}: reg is not supermachine's GICD + GICR", p.node));
            }
            put_be64(dtb, gicr, QEMU_GICR);
            done.push(format!(
                "{}: GICv3 redistributor base {SM_GICR:#x} -> {QEMU_GICR:#x}",
                p.node
            ));
        }
        if p.node.starts_with("virtio_mmio@") && p.name == "interrupts" {
            let reg = reg_of(&p.node).ok_or_else(|| format!("{}: no reg", p.node))?;
            let base = be64(dtb, reg.start)?;
            let slot = base
                .checked_sub(VIRTIO_BASE)
                .filter(|off| off % VIRTIO_STRIDE == 0 && off / VIRTIO_STRIDE < QEMU_TRANSPORTS)
                .map(|off| off / VIRTIO_STRIDE)
                .ok_or_else(|| format!("{}: {base:#x} is no QEMU virtio-mmio transport", p.node))?;
            // <type (0 = SPI), number, flags>.
            if p.value.len() != 12 || be32(dtb, p.value.start)? != 0 {
                return Err(format!("{}: interrupts is not one SPI", p.node));
            }
            let was = be32(dtb, p.value.start + 4)?;
            let spi = (QEMU_VIRTIO_SPI + slot) as u32;
            put_be32(dtb, p.value.start + 4, spi);
            done.push(format!("{}: SPI {was} -> {spi} (transport {slot})", p.node));
        }
    }
    if !done.iter().any(|d| d.contains("redistributor")) {
        return Err("no GICv3 node (intc@…) in the tree".into());
    }
    Ok(done)
}
