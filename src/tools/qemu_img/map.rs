//! `qemu-img map`: where the data of an image lives (qemu-img.c's img_map).
//!
//! Block status is asked layer by layer down the backing chain until a layer knows the range
//! (data or zeroes); neighbouring answers that agree are merged into one extent. Human output
//! lists the data extents and where they are mapped; JSON lists every extent.

use std::rc::Rc;

use block::driver::StatusFlags;
use block::BlockDriverState;

use super::cli::{self, error_exit, error_report, long, OpenSpec, OutputFormat};
use super::cli::{OPT_IMAGE_OPTS, OPT_MAX_LENGTH, OPT_OBJECT, OPT_OUTPUT, OPT_START_OFFSET};

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("format", true, 'f'),
    long("output", true, OPT_OUTPUT),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force-share", false, 'U'),
    long("start-offset", true, OPT_START_OFFSET),
    long("max-length", true, OPT_MAX_LENGTH),
];

/// One extent of the map (QEMU's MapEntry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Bytes.
    pub length: u64,
    /// Reads return data from the image (not necessarily non-zero).
    pub data: bool,
    /// Reads return zeroes.
    pub zero: bool,
    /// Stored compressed.
    pub compressed: bool,
    /// Offset in `filename`, when the data has a host location.
    pub offset: Option<u64>,
    /// How many backing layers down the answer came from.
    pub depth: u64,
    /// Allocated in the layer that answered.
    pub present: bool,
    /// The file holding the data, when `offset` is known.
    pub filename: Option<String>,
}

/// Runs `qemu-img map`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":f:s:l:hU", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut spec = OpenSpec::default();
    let (mut output, mut start, mut max_length) = (None, 0u64, None);
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => return super::help::print_help(),
            'f' => spec.fmt = Some(arg),
            'U' => spec.flags.force_share = true,
            OPT_OUTPUT => output = Some(arg),
            OPT_START_OFFSET => match cli::cvtnum("start offset", &arg) {
                Some(v) => start = v as u64,
                None => return 1,
            },
            OPT_MAX_LENGTH => match cli::cvtnum("max length", &arg) {
                Some(v) => max_length = Some(v as u64),
                None => return 1,
            },
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(&arg) {
                    return rc;
                }
            }
            OPT_IMAGE_OPTS => spec.image_opts = true,
            _ => {}
        }
    }
    if parsed.operands.len() != 1 {
        return error_exit("Expecting one image file name");
    }
    spec.filename = parsed.operands[0].clone();
    let Some(format) = cli::parse_output(output.as_deref()) else {
        return 1;
    };
    spec.flags.read_only = true;
    cli::run_co(async {
        let Some(blk) = cli::img_open(&spec).await else {
            return 1;
        };
        let mut length = blk.getlength();
        if let Some(max) = max_length {
            length = length.min(start.saturating_add(max));
        }
        let ok = map_image(&blk.bs(), start, length, format).await;
        let _ = blk.close().await;
        i32::from(!ok)
    })
}

async fn map_image(bs: &Rc<BlockDriverState>, start: u64, length: u64, fmt: OutputFormat) -> bool {
    match fmt {
        OutputFormat::Human => println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to"),
        OutputFormat::Json => print!("["),
    }
    let mut curr = MapEntry {
        start,
        ..MapEntry::default()
    };
    while curr.start + curr.length < length {
        let offset = curr.start + curr.length;
        let mut next = match get_block_status(bs, offset, length - offset).await {
            Ok(e) => e,
            Err(e) => {
                error_report(&format!(
                    "Could not read file metadata: {}",
                    block::error::strerror(e.errno())
                ));
                return false;
            }
        };
        if entry_mergeable(&curr, &next) {
            curr.length += next.length;
            continue;
        }
        if curr.length > 0 && !dump_map_entry(fmt, &curr, Some(&mut next)) {
            return false;
        }
        curr = next;
    }
    let ok = dump_map_entry(fmt, &curr, None);
    if fmt == OutputFormat::Json {
        println!("]");
    }
    ok
}

/// The status of the range at `offset`, from the first layer of the chain that knows it.
pub async fn get_block_status(
    bs: &Rc<BlockDriverState>,
    offset: u64,
    bytes: u64,
) -> block::Result<MapEntry> {
    let mut layer = bs.clone();
    let mut depth = 0;
    let mut bytes = bytes;
    let status = loop {
        // Filters are looked through, and count for no depth.
        layer = layer.skip_filters();
        let mut status = layer.co_block_status(true, offset, bytes).await?;
        if status.bytes == 0 {
            if depth == 0 {
                return Err(block::Error::from_errno(libc::EIO));
            }
            // Past the end of a shorter backing file: zeroes.
            status = block::driver::BlockStatus::new(StatusFlags::ZERO, bytes);
            break status;
        }
        bytes = status.bytes;
        if status
            .flags
            .intersects(StatusFlags::ZERO | StatusFlags::DATA)
        {
            break status;
        }
        match layer.backing() {
            Some(next) => {
                layer = next;
                depth += 1;
            }
            None => break status,
        }
    };
    let has_offset = status.flags.contains(StatusFlags::OFFSET_VALID);
    let present = status.flags.contains(StatusFlags::ALLOCATED)
        && status
            .flags
            .intersects(StatusFlags::ZERO | StatusFlags::DATA);
    Ok(MapEntry {
        start: offset,
        length: status.bytes,
        data: status.flags.contains(StatusFlags::DATA),
        zero: status.flags.contains(StatusFlags::ZERO),
        compressed: status.flags.contains(StatusFlags::COMPRESSED),
        offset: has_offset.then_some(status.map),
        depth,
        present,
        filename: status
            .file
            .as_ref()
            .filter(|_| has_offset)
            .map(|f| f.filename()),
    })
}

/// Whether `next` continues `curr` (entry_mergeable).
fn entry_mergeable(curr: &MapEntry, next: &MapEntry) -> bool {
    if curr.length == 0 {
        return false;
    }
    if curr.zero != next.zero
        || curr.data != next.data
        || curr.compressed != next.compressed
        || curr.depth != next.depth
        || curr.present != next.present
        || curr.filename != next.filename
        || curr.offset.is_some() != next.offset.is_some()
    {
        return false;
    }
    match curr.offset {
        Some(o) => o + curr.length == next.offset.unwrap_or(0),
        None => true,
    }
}

/// `%#x` of C: hex with 0x, except zero which prints as "0".
fn c_alt_hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

/// Prints one extent (dump_map_entry); the human form fails on data without a host offset.
fn dump_map_entry(fmt: OutputFormat, e: &MapEntry, next: Option<&mut MapEntry>) -> bool {
    match fmt {
        OutputFormat::Human => {
            if e.data && e.offset.is_none() {
                error_report("File contains external, encrypted or compressed clusters.");
                return false;
            }
            if e.data && !e.zero {
                println!(
                    "{:<16}{:<16}{:<16}{}",
                    c_alt_hex(e.start),
                    c_alt_hex(e.length),
                    c_alt_hex(e.offset.unwrap_or(0)),
                    e.filename.as_deref().unwrap_or("")
                );
            }
            // Human output does not tell zero from unallocated: merge them.
            if let Some(n) = next {
                if !n.data || n.zero {
                    n.data = false;
                    n.zero = true;
                }
            }
        }
        OutputFormat::Json => {
            print!(
                "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
                e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
            );
            if let Some(o) = e.offset {
                print!(", \"offset\": {o}");
            }
            print!("}}");
            if next.is_some() {
                println!(",");
            }
        }
    }
    true
}
