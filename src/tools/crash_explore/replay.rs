//! Reading a dm-log-writes log (ours or QEMU's blklogwrites) into its entries and replaying
//! entries onto an in-memory copy of the logged file: the raw material of every crash image.
//!
//! The Linux kernel's replay-log (xfstests src/log-writes/) plays the same role for
//! dm-log-writes; the on-disk layout is `block::filters::blklogwrites::log_format`.

use block::filters::blklogwrites::log_format::{
    LogEntry, LogSuper, ENTRY_SIZE, LOG_DISCARD_FLAG, LOG_FLUSH_FLAG, SUPER_SIZE,
};

/// The largest file a log may describe: replay holds the file in memory, and a hostile log
/// must not make it allocate more.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// One logged request: its entry and where its data starts in the log.
#[derive(Clone, Copy, Debug)]
pub struct Logged {
    /// The entry sector's fields.
    pub entry: LogEntry,
    /// Byte offset of the request's data in the log (unused for discards and flushes).
    pub data_offset: usize,
}

impl Logged {
    /// Whether the entry is a flush (or the flush that stands for a FUA write).
    pub fn is_flush(&self) -> bool {
        self.entry.flags & LOG_FLUSH_FLAG != 0
    }

    /// Whether the entry changes the file (a write, write-zeroes or discard with sectors).
    pub fn is_write(&self) -> bool {
        self.entry.nr_sectors > 0
    }

    /// Whether the entry is a discard (its sectors' contents become undefined).
    pub fn is_discard(&self) -> bool {
        self.entry.flags & LOG_DISCARD_FLAG != 0
    }
}

/// A whole log held in memory.
pub struct WriteLog {
    /// The log file's bytes.
    bytes: Vec<u8>,
    /// Log sector size in bytes: the unit of every entry's sector and length.
    pub sectorsize: usize,
    /// The entries the super block vouches for, in log order.
    pub entries: Vec<Logged>,
}

impl WriteLog {
    /// Parses a log, refusing one whose entries run past its end or whose fields overflow.
    pub fn parse(bytes: Vec<u8>) -> Result<WriteLog, String> {
        let head: &[u8; SUPER_SIZE] = bytes
            .get(..SUPER_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or("log is shorter than its super block")?;
        let sb = LogSuper::decode(head).map_err(|e| e.to_string())?;
        let sectorsize = sb.sectorsize as usize;
        if !block::filters::blklogwrites::log_format::sector_size_valid(sectorsize as u64) {
            return Err(format!("invalid log sector size {sectorsize}"));
        }
        let mut entries = Vec::new();
        let mut offset = sectorsize;
        for index in 0..sb.nr_entries {
            let raw: &[u8; ENTRY_SIZE] = bytes
                .get(offset..offset + ENTRY_SIZE)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("log ends inside entry {index}"))?;
            let entry = LogEntry::decode(raw, index).map_err(|e| e.to_string())?;
            let span = entry
                .log_sectors()
                .checked_mul(sectorsize as u64)
                .and_then(|s| usize::try_from(s).ok())
                .filter(|s| offset.checked_add(*s).is_some_and(|end| end <= bytes.len()))
                .ok_or_else(|| format!("entry {index} runs past the end of the log"))?;
            entry
                .sector
                .checked_add(entry.nr_sectors)
                .and_then(|s| s.checked_mul(sectorsize as u64))
                .filter(|end| *end <= MAX_FILE_BYTES)
                .ok_or_else(|| format!("entry {index} addresses past {MAX_FILE_BYTES} bytes"))?;
            entries.push(Logged {
                entry,
                data_offset: offset + sectorsize,
            });
            offset += span;
        }
        Ok(WriteLog {
            bytes,
            sectorsize,
            entries,
        })
    }

    /// The data of sector `i` (counted in log sectors from the request's first) of `e`.
    pub fn sector_data(&self, e: &Logged, i: u64) -> &[u8] {
        let start = e.data_offset + i as usize * self.sectorsize;
        &self.bytes[start..start + self.sectorsize]
    }

    /// Indices of the flush entries, in log order.
    pub fn flushes(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| self.entries[i].is_flush())
            .collect()
    }
}

/// What becomes of a logged discard in a crash image: a device may keep or drop the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscardAs {
    /// The sectors read back as zeroes.
    Zeroes,
    /// The sectors keep their old contents.
    Kept,
}

/// An in-memory image of the logged file that entries are replayed onto.
#[derive(Clone)]
pub struct FileImage(pub Vec<u8>);

impl FileImage {
    /// Replays sector `i` of entry `e` (a write's data, or zeroes for a discard).
    pub fn apply_sector(&mut self, log: &WriteLog, e: &Logged, i: u64, discard: DiscardAs) {
        let ss = log.sectorsize;
        let at = (e.entry.sector + i) as usize * ss;
        if self.0.len() < at + ss {
            self.0.resize(at + ss, 0);
        }
        if e.is_discard() {
            if discard == DiscardAs::Zeroes {
                self.0[at..at + ss].fill(0);
            }
        } else {
            self.0[at..at + ss].copy_from_slice(log.sector_data(e, i));
        }
    }

    /// Replays a whole entry.
    pub fn apply(&mut self, log: &WriteLog, e: &Logged, discard: DiscardAs) {
        for i in 0..e.entry.nr_sectors {
            self.apply_sector(log, e, i, discard);
        }
    }

    /// Whether the image holds the same data as `file`, ignoring zeroes past either's end
    /// (growing a file by truncation is not a logged request).
    pub fn same_as(&self, file: &[u8]) -> bool {
        let n = self.0.len().min(file.len());
        self.0[..n] == file[..n]
            && self.0[n..].iter().all(|&b| b == 0)
            && file[n..].iter().all(|&b| b == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::filters::blklogwrites::log_format::LOG_FUA_FLAG;

    fn log_of(entries: &[(LogEntry, u8)]) -> Vec<u8> {
        let mut bytes = LogSuper {
            nr_entries: entries.len() as u64,
            sectorsize: 512,
        }
        .encode();
        for (e, fill) in entries {
            bytes.extend(e.encode(512));
            if e.flags & LOG_DISCARD_FLAG == 0 {
                bytes.extend(vec![*fill; e.nr_sectors as usize * 512]);
            }
        }
        bytes
    }

    fn entry(sector: u64, nr_sectors: u64, flags: u64) -> LogEntry {
        LogEntry {
            sector,
            nr_sectors,
            flags,
            data_len: 0,
        }
    }

    #[test]
    fn replays_writes_and_discards() {
        let bytes = log_of(&[
            (entry(2, 2, 0), 7),
            (entry(0, 0, LOG_FLUSH_FLAG), 0),
            (entry(3, 1, LOG_DISCARD_FLAG), 0),
            (entry(0, 1, LOG_FUA_FLAG), 9),
        ]);
        let log = WriteLog::parse(bytes).unwrap();
        assert_eq!(log.flushes(), vec![1]);
        let mut img = FileImage(vec![1; 512]);
        for e in &log.entries {
            img.apply(&log, e, DiscardAs::Zeroes);
        }
        assert_eq!(img.0.len(), 4 * 512);
        assert!(img.0[..512].iter().all(|&b| b == 9));
        assert!(img.0[1024..1536].iter().all(|&b| b == 7));
        assert!(img.0[1536..].iter().all(|&b| b == 0));
        assert!(img.same_as(&[img.0.clone(), vec![0; 512]].concat()));
    }

    #[test]
    fn refuses_logs_that_lie_about_their_length() {
        let mut bytes = log_of(&[(entry(0, 4, 0), 1)]);
        bytes.truncate(bytes.len() - 1);
        let err = WriteLog::parse(bytes).err().unwrap();
        assert!(err.contains("past the end"), "{err}");
        let huge = log_of(&[(entry(1 << 40, 1, LOG_DISCARD_FLAG), 0)]);
        assert!(WriteLog::parse(huge)
            .err()
            .unwrap()
            .contains("addresses past"));
        let mut wrap = log_of(&[(entry(u64::MAX, 1, LOG_DISCARD_FLAG), 0)]);
        assert!(WriteLog::parse(wrap.clone())
            .err()
            .unwrap()
            .contains("addresses past"));
        wrap[0] ^= 1;
        assert!(WriteLog::parse(wrap).err().unwrap().contains("magic"));
    }
}
