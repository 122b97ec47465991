//! The VMDK text descriptor: `key="value"` lines, the content IDs that tie a delta disk to
//! its parent, and one line per extent (vmdk_parse_description, vmdk_read_cid,
//! vmdk_write_cid, vmdk_parent_open and vmdk_parse_extents in QEMU's block/vmdk.c).
//!
//! The descriptor is either a file of its own (monolithicFlat, twoGbMaxExtent*, vmfs...)
//! or embedded in the first sparse extent after its header. QEMU reads it as a C string
//! with `strstr` and `sscanf`; the parsers here keep those semantics (first match wins,
//! a NUL ends the text) so that the same hand-edited descriptors open the same way.

use block::{Error, Result};

/// Bytes of an embedded descriptor area, and of what QEMU reads to find the CIDs (DESC_SIZE).
pub const DESC_SIZE: usize = 20 * 512;

/// The text before the first NUL (what C's string functions see).
pub fn c_str(buf: &[u8]) -> &[u8] {
    buf.iter()
        .position(|&b| b == 0)
        .map_or(buf, |nul| &buf[..nul])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of `name="value"`, found as QEMU does: the first occurrence of `name`
/// anywhere, two characters skipped, up to the next quote (vmdk_parse_description).
pub fn parse_description(desc: &[u8], name: &str) -> Option<String> {
    let desc = c_str(desc);
    let start = find(desc, name.as_bytes())? + name.len() + 2;
    if start >= desc.len() {
        return None;
    }
    let len = desc[start..].iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&desc[start..start + len]).into_owned())
}

/// Parses a hex number as `sscanf("%x")`: leading white space, a sign, an optional 0x.
fn scan_hex(s: &[u8]) -> Option<u32> {
    let s = skip_space(s);
    let (neg, s) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let s = match s {
        [b'0', b'x' | b'X', rest @ ..] if rest.first().is_some_and(u8::is_ascii_hexdigit) => rest,
        _ => s,
    };
    let digits = s.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let v = s[..digits].iter().fold(0u32, |v, &d| {
        v.wrapping_shl(4) | (d as char).to_digit(16).expect("hex digit")
    });
    Some(if neg { v.wrapping_neg() } else { v })
}

/// The content ID (`CID`) or, with `parent`, the parent's (`parentCID`) (vmdk_read_cid):
/// like QEMU, the first "CID" in the text is taken, even inside "parentCID".
pub fn read_cid(desc: &[u8], parent: bool) -> Result<u32> {
    let desc = c_str(desc);
    let key: &[u8] = if parent { b"parentCID" } else { b"CID" };
    let at = find(desc, key).ok_or_else(|| Error::from_errno(libc::EINVAL))? + key.len() + 1;
    desc.get(at..)
        .and_then(scan_hex)
        .ok_or_else(|| Error::from_errno(libc::EINVAL))
}

/// Rewrites the CID in a DESC_SIZE descriptor buffer (vmdk_write_cid): everything from
/// after `CID=` up to `parentCID` becomes the new value and a newline. Bytes after the
/// new end are left as they were, as QEMU leaves them.
pub fn write_cid(buf: &mut [u8], cid: u32) -> Result<()> {
    let text_len = c_str(buf).len();
    let parent_at =
        find(&buf[..text_len], b"parentCID").ok_or_else(|| Error::from_errno(libc::EINVAL))?;
    let tail = buf[parent_at..text_len].to_vec();
    let Some(cid_at) = find(&buf[..text_len], b"CID") else {
        return Ok(());
    };
    let mut text = format!("{cid:x}\n").into_bytes();
    text.extend(tail);
    let start = (cid_at + 4).min(buf.len());
    // Truncated to the buffer with room for the terminating NUL, as snprintf/pstrcat do.
    let room = buf.len().saturating_sub(start + 1);
    text.truncate(room);
    buf[start..start + text.len()].copy_from_slice(&text);
    if start + text.len() < buf.len() {
        buf[start + text.len()] = 0;
    }
    Ok(())
}

/// Longest backing file name QEMU keeps (PATH_MAX - 1).
const MAX_PARENT_NAME: usize = 4095;

/// The `parentFileNameHint` of a delta disk, if any (vmdk_parent_open).
pub fn parent_file_name(desc: &[u8]) -> Result<Option<String>> {
    let desc = c_str(desc);
    let key = b"parentFileNameHint";
    let Some(at) = find(desc, key) else {
        return Ok(None);
    };
    let start = (at + key.len() + 2).min(desc.len());
    let len = desc[start..]
        .iter()
        .position(|&b| b == b'"')
        .ok_or_else(|| Error::from_errno(libc::EINVAL))?;
    if len > MAX_PARENT_NAME {
        return Err(Error::from_errno(libc::EINVAL));
    }
    Ok(Some(
        String::from_utf8_lossy(&desc[start..start + len]).into_owned(),
    ))
}

/// One `RW <sectors> <TYPE> "<file>" [offset]` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    /// Sectors of the guest disk the extent holds.
    pub sectors: u64,
    /// FLAT, SPARSE, VMFS, VMFSSPARSE or SESPARSE.
    pub kind: String,
    /// The extent file, relative to the descriptor's directory unless absolute.
    pub file_name: String,
    /// Sector in the file where a flat extent's data starts.
    pub flat_offset: u64,
}

fn skip_space(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// `%Ns`: up to `max` non-space characters after white space.
fn scan_word(s: &[u8], max: usize) -> Option<(String, &[u8])> {
    let s = skip_space(s);
    let n = s
        .iter()
        .take(max)
        .take_while(|b| !b.is_ascii_whitespace())
        .count();
    (n > 0).then(|| (String::from_utf8_lossy(&s[..n]).into_owned(), &s[n..]))
}

/// `%ld` after white space.
fn scan_i64(s: &[u8]) -> Option<(i64, &[u8])> {
    let s = skip_space(s);
    let sign = usize::from(matches!(s.first(), Some(b'-' | b'+')));
    let digits = s[sign..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let text = std::str::from_utf8(&s[..sign + digits]).ok()?;
    // sscanf saturates out-of-range values.
    let v = text
        .parse::<i64>()
        .unwrap_or(if s[0] == b'-' { i64::MIN } else { i64::MAX });
    Some((v, &s[sign + digits..]))
}

/// The fields `sscanf("%10s %ld %10s \"%511[^\n\r\"]\" %ld")` matches at `p`, and how many.
fn scan_extent_line(p: &[u8]) -> (usize, String, i64, String, String, i64) {
    let mut out = (0, String::new(), 0, String::new(), String::new(), -1);
    let Some((access, s)) = scan_word(p, 10) else {
        return out;
    };
    out = (1, access, 0, String::new(), String::new(), -1);
    let Some((sectors, s)) = scan_i64(s) else {
        return out;
    };
    out.0 = 2;
    out.2 = sectors;
    let Some((kind, s)) = scan_word(s, 10) else {
        return out;
    };
    out.0 = 3;
    out.3 = kind;
    let s = skip_space(s);
    let Some(s) = s.strip_prefix(b"\"") else {
        return out;
    };
    let n = s
        .iter()
        .take(511)
        .take_while(|&&b| !matches!(b, b'\n' | b'\r' | b'"'))
        .count();
    if n == 0 {
        return out;
    }
    out.0 = 4;
    out.4 = String::from_utf8_lossy(&s[..n]).into_owned();
    let Some(s) = s[n..].strip_prefix(b"\"") else {
        return out;
    };
    if let Some((offset, _)) = scan_i64(s) {
        out.0 = 5;
        out.5 = offset;
    }
    out
}

/// The extent lines of a descriptor, in order (vmdk_parse_extents): lines that are not
/// RW extents of a known type are skipped, malformed ones are an error.
pub fn parse_extents(desc: &[u8]) -> Result<Vec<ExtentLine>> {
    let desc = c_str(desc);
    let mut extents = Vec::new();
    let mut p = 0;
    while p < desc.len() {
        let line_end = desc[p..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(desc.len(), |i| p + i + 1);
        // sscanf runs on the rest of the text, not just this line.
        let (matches, access, sectors, kind, file_name, flat_offset) = scan_extent_line(&desc[p..]);
        let line = &desc[p..line_end];
        p = line_end;
        if matches < 4 || access != "RW" {
            continue;
        }
        let valid = match kind.as_str() {
            "FLAT" => matches == 5 && flat_offset >= 0,
            "VMFS" => matches == 4,
            _ => matches == 4,
        };
        if !valid {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            return Err(Error::invalid(format!(
                "Invalid extent line: {}",
                String::from_utf8_lossy(line)
            )));
        }
        let known = ["FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE"];
        if sectors <= 0 || !known.contains(&kind.as_str()) {
            continue;
        }
        extents.push(ExtentLine {
            sectors: sectors as u64,
            flat_offset: if kind == "FLAT" {
                flat_offset as u64
            } else {
                0
            },
            kind,
            file_name,
        });
    }
    Ok(extents)
}

/// The createType values a descriptor file may name (vmdk_open_desc_file).
pub const DESCRIPTOR_FILE_TYPES: [&str; 6] = [
    "monolithicFlat",
    "vmfs",
    "vmfsSparse",
    "seSparse",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
];

/// What a new descriptor says (vmdk_co_do_create's template).
pub struct NewDescriptor<'a> {
    /// Content ID.
    pub cid: u32,
    /// The parent's content ID, 0xffffffff without one.
    pub parent_cid: u32,
    /// The subformat.
    pub create_type: &'a str,
    /// `parentFileNameHint`.
    pub parent: Option<&'a str>,
    /// The extent lines, each ending in a newline.
    pub extents: &'a str,
    /// `ddb.virtualHWVersion`.
    pub hw_version: &'a str,
    /// Virtual size in bytes, for the CHS geometry.
    pub size: u64,
    /// `ddb.adapterType`.
    pub adapter_type: &'a str,
    /// `ddb.toolsVersion`.
    pub tools_version: &'a str,
}

impl NewDescriptor<'_> {
    /// The descriptor text.
    pub fn text(&self) -> String {
        // VMware uses 255 heads for every adapter but IDE.
        let heads: u64 = if self.adapter_type == "ide" { 16 } else { 255 };
        let parent = self
            .parent
            .map_or(String::new(), |p| format!("parentFileNameHint=\"{p}\""));
        format!(
            "# Disk DescriptorFile\nversion=1\nCID={:x}\nparentCID={:x}\ncreateType=\"{}\"\n{parent}\n\
             # Extent description\n{}\n# The Disk Data Base\n#DDB\n\n\
             ddb.virtualHWVersion = \"{}\"\nddb.geometry.cylinders = \"{}\"\n\
             ddb.geometry.heads = \"{heads}\"\nddb.geometry.sectors = \"63\"\n\
             ddb.adapterType = \"{}\"\nddb.toolsVersion = \"{}\"\n",
            self.cid,
            self.parent_cid,
            self.create_type,
            self.extents,
            self.hw_version,
            self.size / (63 * heads * 512),
            self.adapter_type,
            self.tools_version,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: &[u8] = b"# Disk DescriptorFile\nversion=1\nCID=1a2b\nparentCID=ffffffff\n\
        createType=\"twoGbMaxExtentFlat\"\nparentFileNameHint=\"base.vmdk\"\n\
        RW 4194304 FLAT \"t-f001.vmdk\" 0\nRW 100 SPARSE \"t-s002.vmdk\"\nRDONLY 5 FLAT \"x\" 0\n";

    #[test]
    fn descriptor_fields_are_found() {
        assert_eq!(
            parse_description(DESC, "createType").as_deref(),
            Some("twoGbMaxExtentFlat")
        );
        assert_eq!(read_cid(DESC, false).unwrap(), 0x1a2b);
        assert_eq!(read_cid(DESC, true).unwrap(), 0xffffffff);
        assert_eq!(
            parent_file_name(DESC).unwrap().as_deref(),
            Some("base.vmdk")
        );
        let ext = parse_extents(DESC).unwrap();
        assert_eq!(ext.len(), 2);
        assert_eq!(ext[0].kind, "FLAT");
        assert_eq!(ext[0].sectors, 4194304);
        assert_eq!(ext[1].file_name, "t-s002.vmdk");
    }

    #[test]
    fn malformed_extent_lines_are_refused() {
        let err = parse_extents(b"RW 12582912 VMFS \"dummy.vmdk\" 1\n").unwrap_err();
        assert_eq!(
            err.message(),
            Some("Invalid extent line: RW 12582912 VMFS \"dummy.vmdk\" 1")
        );
        assert!(parse_extents(b"RW 10 FLAT \"a\"\n").is_err());
    }

    #[test]
    fn cid_is_rewritten_in_place() {
        let mut buf = DESC.to_vec();
        buf.resize(DESC_SIZE, 0);
        write_cid(&mut buf, 0xdead).unwrap();
        assert_eq!(read_cid(&buf, false).unwrap(), 0xdead);
        assert_eq!(read_cid(&buf, true).unwrap(), 0xffffffff);
        assert!(c_str(&buf).ends_with(b"RDONLY 5 FLAT \"x\" 0\n"));
    }
}
