//! Differential test of the ATA state machine against QEMU: boot the IDE test guest under
//! QEMU with `-trace ide_*`, replay every primary-channel port access of the trace (SeaBIOS's
//! probe and int13 included) against rqemu's `Piix3Ide`, and require the same value for every
//! read, except where rqemu deliberately differs:
//!
//! * status reads QEMU answered while busy (its requests complete later than ours, which
//!   complete at once in the replay) or while SRST was held (QEMU resets from a bottom half);
//! * IDENTIFY words about DMA, TRIM and SMART (this disk is PIO only, without them), and word 59,
//!   which QEMU does not update after SET MULTIPLE;
//! * IDNF where QEMU reports ABRT for an address past the end of the disk.
//!
//! Skips (or fails with RQEMU_REQUIRE_KVM/RQEMU_REQUIRE_QEMU=1) without KVM, QEMU or nasm.

mod prereq;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use rqemu::devices::ide::{BlockOp, DriveConfig, DriveInfo, Piix3Ide};

const DISK_SECTORS: u64 = 200 << 21;
/// IDENTIFY words where this PIO-only disk differs from QEMU's.
const IDENTIFY_DIFFS: &[usize] = &[49, 52, 53, 59, 62, 63, 69, 82, 85, 88, 169];

fn prerequisites() -> bool {
    use prereq::{kvm, require, tool};
    require("/dev/kvm", kvm(), "RQEMU_REQUIRE_KVM")
        && require(
            "qemu-system-x86_64",
            tool("qemu-system-x86_64"),
            "RQEMU_REQUIRE_QEMU",
        )
        && require("qemu-img", tool("qemu-img"), "RQEMU_REQUIRE_QEMU")
        && require("nasm", tool("nasm"), "RQEMU_REQUIRE_QEMU")
}

/// One primary-channel port access from QEMU's trace.
#[derive(Debug)]
struct Access {
    line: usize,
    write: bool,
    port: u16,
    size: usize,
    val: u32,
}

fn parse_trace(text: &str) -> Vec<Access> {
    let mut out = Vec::new();
    for (line, l) in text.lines().enumerate() {
        let mut words = l.split_whitespace();
        let (write, size) = match words.next() {
            Some("ide_ioport_read" | "ide_status_read") => (false, 1),
            Some("ide_ioport_write" | "ide_ctrl_write") => (true, 1),
            Some("ide_data_readw") => (false, 2),
            Some("ide_data_writew") => (true, 2),
            Some("ide_data_readl") => (false, 4),
            Some("ide_data_writel") => (true, 4),
            _ => continue,
        };
        let hex = |key: &str| {
            let at = l.find(key)? + key.len();
            let digits: String = l[at..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            u32::from_str_radix(&digits, 16).ok()
        };
        let (Some(port), Some(val)) = (hex("@ 0x"), hex("val 0x")) else {
            continue;
        };
        if (0x1F0..=0x1F7).contains(&port) || port == 0x3F6 {
            out.push(Access {
                line: line + 1,
                write,
                port: port as u16,
                size,
                val,
            });
        }
    }
    out
}

/// The image as the guest found it: the program, zeros elsewhere, then what it wrote.
struct Disk {
    boot: Vec<u8>,
    written: HashMap<u64, Vec<u8>>,
}

impl Disk {
    fn sector(&self, n: u64) -> Vec<u8> {
        if let Some(s) = self.written.get(&n) {
            return s.clone();
        }
        let mut s = vec![0; 512];
        let start = (n as usize).saturating_mul(512);
        if start < self.boot.len() {
            let end = self.boot.len().min(start + 512);
            s[..end - start].copy_from_slice(&self.boot[start..end]);
        }
        s
    }

    fn perform(&mut self, op: &BlockOp) -> Vec<u8> {
        match op {
            BlockOp::Read { sector, count } => (0..*count as u64)
                .flat_map(|i| self.sector(sector + i))
                .collect(),
            BlockOp::Write { sector, data, .. } => {
                for (i, chunk) in data.chunks(512).enumerate() {
                    self.written.insert(sector + i as u64, chunk.to_vec());
                }
                Vec::new()
            }
            BlockOp::Flush => Vec::new(),
        }
    }
}

/// What the replay tracks to excuse the deliberate differences.
#[derive(Default)]
struct Context {
    control: u8,
    command: u8,
    data_words: usize,
}

impl Context {
    fn excused(&self, a: &Access, ours: u32) -> bool {
        let status = matches!(a.port, 0x1F7 | 0x3F6);
        if status && (a.val & 0x80 != 0 || self.control & 0x04 != 0) {
            return true;
        }
        if a.port == 0x1F0 && self.command == 0xEC {
            let word = self.data_words;
            return a.size == 2 && IDENTIFY_DIFFS.contains(&word);
        }
        let read_cmd = matches!(self.command, 0x20 | 0x24 | 0x29 | 0xC4);
        a.port == 0x1F1 && read_cmd && a.val == 0x04 && ours == 0x10
    }

    fn saw(&mut self, a: &Access) {
        match (a.write, a.port) {
            (true, 0x3F6) => self.control = a.val as u8,
            (true, 0x1F7) => {
                self.command = a.val as u8;
                self.data_words = 0;
            }
            (false, 0x1F0) => self.data_words += a.size / 2,
            _ => {}
        }
    }
}

fn replay(accesses: &[Access], boot: Vec<u8>) -> (usize, usize, Vec<String>) {
    let drive = DriveConfig {
        kind: Default::default(),
        info: DriveInfo::qemu_default(DISK_SECTORS, 0),
        read_only: false,
        write_cache: true,
    };
    let mut ide = Piix3Ide::new([[Some(drive), None], [None, None]]);
    let mut disk = Disk {
        boot,
        written: HashMap::new(),
    };
    let mut ctx = Context::default();
    let (mut compared, mut excused, mut diffs) = (0, 0, Vec::new());
    for a in accesses {
        let bytes = a.val.to_le_bytes();
        if a.write {
            ide.pio_write(a.port, a.size, &bytes[..a.size]);
        } else {
            let mut buf = [0u8; 4];
            ide.pio_read(a.port, a.size, &mut buf[..a.size]);
            let ours = u32::from_le_bytes(buf);
            if ours != a.val && ctx.excused(a, ours) {
                excused += 1;
            } else if ours != a.val {
                let word = ctx.data_words;
                diffs.push(format!(
                    "trace line {}: {a:?} (cmd {:#x}, data word {word}) but rqemu read {ours:#x}",
                    a.line, ctx.command
                ));
            }
            compared += 1;
        }
        ctx.saw(a);
        while let Some(req) = ide.channel(0).take_request() {
            let data = disk.perform(&req.op);
            ide.channel(0).complete(req.id, Ok(data));
        }
    }
    (compared, excused, diffs)
}

#[test]
fn ata_state_machine_reads_what_qemu_read_on_the_test_guest() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guests");
    let bin = dir.path().join("ide-test.bin");
    let nasm = Command::new("nasm")
        .args(["-f", "bin", &format!("-DDISK_SECTORS={DISK_SECTORS}")])
        .arg(format!("-I{}/", guests.display()))
        .arg("-o")
        .arg(&bin)
        .arg(guests.join("ide-test.asm"))
        .status()
        .unwrap();
    assert!(nasm.success());
    let boot = std::fs::read(&bin).unwrap();
    let image = dir.path().join("disk.raw");
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&image)
        .arg((DISK_SECTORS * 512).to_string())
        .status()
        .unwrap();
    assert!(created.success());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &boot, 0).unwrap();
    let trace = dir.path().join("trace.log");
    let out = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "pc",
            "-enable-kvm",
            "-nographic",
            "-no-reboot",
            "-m",
            "64",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=ide,index=0",
            image.display()
        ))
        .arg("-trace")
        .arg(format!("enable=ide_*,file={}", trace.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&out.stdout);
    assert!(serial.contains("DONE"), "guest did not finish:\n{serial}");
    let accesses = parse_trace(&std::fs::read_to_string(&trace).unwrap());
    let (compared, excused, diffs) = replay(&accesses, boot);
    eprintln!(
        "replayed {} accesses, compared {compared} reads, {excused} known differences",
        accesses.len()
    );
    assert!(compared > 5000, "trace too short: {compared} reads");
    assert!(
        diffs.is_empty(),
        "{} reads differ from QEMU; first ones:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(20)].join("\n")
    );
}
