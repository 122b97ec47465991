//! `qemu-img snapshot`: list, create, apply or delete internal snapshots (qemu-img.c's
//! img_snapshot and dump_snapshots; the table layout is block/qapi.c's bdrv_snapshot_dump).
//!
//! Listing is the default and opens the image read-only; the other actions open it for
//! writing. Each action reports failures with qemu-img's own prefix ("Could not create
//! snapshot 'x': ...") and exits with status 1.

use block::snapshot::{self, SnapshotInfo};
use block::{BlockDriverState, OpenFlags};

use super::cli::{self, error_exit, error_report, long, OpenSpec};
use super::cli::{OPT_IMAGE_OPTS, OPT_OBJECT};
use super::human::size_to_str;

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("quiet", false, 'q'),
    long("format", true, 'f'),
    long("list", false, 'l'),
    long("apply", true, 'a'),
    long("create", true, 'c'),
    long("delete", true, 'd'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force-share", false, 'U'),
];

/// Longest snapshot name QEMU keeps (the 256-byte name buffer of QEMUSnapshotInfo).
const MAX_NAME_BYTES: usize = 255;

/// What the command does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    List,
    Apply(String),
    Create(String),
    Delete(String),
}

/// Runs `qemu-img snapshot`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":la:c:d:f:hqU", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut spec = OpenSpec::default();
    let mut action = None;
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        let chosen = match opt.key {
            'h' => return super::help::print_help(),
            'f' => {
                spec.fmt = Some(arg);
                None
            }
            'q' | 'U' => {
                spec.flags.force_share |= opt.key == 'U';
                None
            }
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(&arg) {
                    return rc;
                }
                None
            }
            OPT_IMAGE_OPTS => {
                spec.image_opts = true;
                None
            }
            'l' => Some(Action::List),
            'a' => Some(Action::Apply(arg)),
            'c' => Some(Action::Create(arg)),
            'd' => Some(Action::Delete(arg)),
            _ => None,
        };
        if let Some(a) = chosen {
            if action.is_some() {
                return error_exit("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = Some(a);
        }
    }
    if parsed.operands.len() != 1 {
        return error_exit("Expecting one image file name");
    }
    spec.filename = parsed.operands[0].clone();
    let action = action.unwrap_or(Action::List);
    spec.flags = OpenFlags {
        read_only: action == Action::List,
        force_share: spec.flags.force_share,
        ..OpenFlags::default()
    };
    cli::run_co(async {
        let Some(blk) = cli::img_open(&spec).await else {
            return 1;
        };
        let ok = perform(&blk.bs(), &action).await;
        // Like qemu-img, the status is the action's: a failed write-back at close is not
        // reported (an error that broke the action usually breaks the flush too).
        let _ = blk.close().await;
        i32::from(!ok)
    })
}

/// Does the action, reporting a failure; returns whether it succeeded.
async fn perform(bs: &BlockDriverState, action: &Action) -> bool {
    match action {
        Action::List => {
            print!("{}", dump_snapshots(bs));
            true
        }
        Action::Create(name) => {
            let sn = new_snapshot_info(name);
            match snapshot::bdrv_snapshot_create(bs, &sn).await {
                Ok(()) => true,
                Err(e) => {
                    let why = block::error::strerror(e.errno());
                    error_report(&format!("Could not create snapshot '{name}': {why}"));
                    false
                }
            }
        }
        Action::Apply(name) => match snapshot::bdrv_snapshot_goto(bs, name).await {
            Ok(()) => true,
            Err(e) => {
                error_report(&format!("Could not apply snapshot '{name}': {e}"));
                false
            }
        },
        Action::Delete(name) => {
            let Ok(sn) = snapshot::bdrv_snapshot_find(bs, name) else {
                error_report(&format!(
                    "Could not delete snapshot '{name}': snapshot not found"
                ));
                return false;
            };
            let deleted =
                snapshot::bdrv_snapshot_delete(bs, Some(&sn.id_str), Some(&sn.name)).await;
            if let Err(e) = deleted {
                error_report(&format!("Could not delete snapshot '{name}': {e}"));
                return false;
            }
            true
        }
    }
}

/// The description `-c` gives the driver: the name (cut like QEMU's fixed buffer), the
/// wall-clock time, everything else zero.
fn new_snapshot_info(name: &str) -> SnapshotInfo {
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    SnapshotInfo {
        name: name[..end].to_string(),
        date_sec: now.as_secs() as u32,
        // QEMU's clock has microsecond resolution.
        date_nsec: now.subsec_micros() * 1000,
        ..SnapshotInfo::default()
    }
}

/// "Snapshot list:" and the table, or nothing without snapshots (dump_snapshots).
fn dump_snapshots(bs: &BlockDriverState) -> String {
    match snapshot::bdrv_snapshot_list(bs) {
        Ok(list) if !list.is_empty() => format!("Snapshot list:\n{}", snapshot_table(&list, "")),
        _ => String::new(),
    }
}

/// The column header and one line per snapshot, each line prefixed with `indent`.
pub fn snapshot_table(list: &[SnapshotInfo], indent: &str) -> String {
    let mut out = format!(
        "{indent}{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    );
    for sn in list {
        out += &format!("{indent}{}\n", snapshot_line(sn));
    }
    out
}

/// One row of the table (bdrv_snapshot_dump).
pub fn snapshot_line(sn: &SnapshotInfo) -> String {
    let secs = sn.vm_clock_nsec / 1_000_000_000;
    let clock = format!(
        "{:04}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        (sn.vm_clock_nsec / 1_000_000) % 1000
    );
    let icount = if sn.icount == u64::MAX {
        String::new()
    } else {
        (sn.icount as i64).to_string()
    };
    format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        sn.id_str,
        sn.name,
        size_to_str(sn.vm_state_size),
        local_date(sn.date_sec),
        clock,
        icount
    )
}

/// "YYYY-MM-DD HH:MM:SS" in local time, as strftime prints it.
fn local_date(secs: u32) -> String {
    let t = secs as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value for localtime_r to overwrite.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live locals for the duration of the call.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return String::new();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_line_up_like_qemu() {
        let header = snapshot_table(&[], "");
        assert_eq!(
            header,
            "ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT\n"
        );
        let sn = SnapshotInfo {
            id_str: "1".into(),
            name: "foo".into(),
            vm_clock_nsec: 3_723_004_000_000,
            icount: u64::MAX,
            ..SnapshotInfo::default()
        };
        let line = snapshot_line(&sn);
        assert!(
            line.starts_with("1       foo                   0 B "),
            "{line}"
        );
        assert!(line.ends_with(" 0001:02:03.004           "), "{line}");
    }

    #[test]
    fn long_names_are_cut_like_qemus_buffer() {
        let name = "x".repeat(300);
        assert_eq!(new_snapshot_info(&name).name.len(), MAX_NAME_BYTES);
    }
}
