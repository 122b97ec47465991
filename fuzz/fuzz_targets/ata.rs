//! ATA/ATAPI: register and data-port sequences on a channel with a disk and a CD-ROM, the
//! block requests it issues completed (or failed) when the input says, as the glue would.
//! A request must stay inside the drive, and its data match the sectors it names.
#![no_main]
use rqemu::devices::ide::ata::{AtaChannel, BlockOp};
use rqemu::devices::ide::identify::{DriveConfig, DriveInfo, DriveKind};

const SECTORS: u64 = 2048;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let disk = DriveConfig {
        kind: DriveKind::Disk,
        info: DriveInfo::qemu_default(SECTORS, 0),
        read_only: false,
        write_cache: data.first().is_some_and(|b| b & 1 == 0),
    };
    let cd = DriveConfig {
        kind: DriveKind::Cdrom,
        info: DriveInfo::qemu_cdrom(SECTORS / 4, 1),
        read_only: true,
        write_cache: false,
    };
    let mut ch = AtaChannel::new(Some(disk), Some(cd), 0x1F0, 0x3F6);
    let mut held = Vec::new();
    for op in data.chunks(3) {
        let [kind, a, b] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
        let val = u32::from_le_bytes([a, b, a ^ b, b]);
        match kind % 9 {
            0 | 1 => ch.ioport_write(a % 8, b),
            2 => drop(ch.ioport_read(a % 8)),
            3 => ch.data_write(if a & 1 == 0 { 2 } else { 4 }, val),
            4 => drop(ch.data_read(if a & 1 == 0 { 2 } else { 4 })),
            5 => ch.control_write(b),
            6 => drop(ch.alt_status_read()),
            7 | 8 => {
                for req in held.drain(..) {
                    let result = perform(&req, kind == 8);
                    ch.complete(req.id, result);
                }
            }
            _ => unreachable!(),
        }
        let _ = ch.irq_update();
        while let Some(req) = ch.take_request() {
            held.push(req);
        }
    }
});

/// What the fake block layer answers: the sectors' bytes, or EIO when `fail`.
fn perform(
    req: &rqemu::devices::ide::ata::BlockRequest,
    fail: bool,
) -> Result<Vec<u8>, block::Error> {
    if fail {
        return Err(block::Error::from_errno(libc::EIO));
    }
    match &req.op {
        BlockOp::Read { sector, count } => {
            assert!(
                sector + *count as u64 <= SECTORS,
                "read past the disk: {:?}",
                req.op
            );
            Ok(vec![0x5a; *count as usize * 512])
        }
        BlockOp::Write { sector, data, .. } => {
            assert!(
                data.len() % 512 == 0 && sector + (data.len() / 512) as u64 <= SECTORS,
                "write past the disk or of part of a sector: sector {sector}, {} bytes",
                data.len()
            );
            Ok(Vec::new())
        }
        BlockOp::Flush => Ok(Vec::new()),
    }
}
