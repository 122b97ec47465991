//! Which crash images a log allows: the file as it was at every flush (or FUA write, which
//! blklogwrites logs as a write and a flush), plus, on top of each, random subsets of the
//! writes logged since that flush applied in random orders, some of them torn at sector
//! granularity. A seeded RNG makes every state reproducible from `--seed`.
//!
//! QEMU has no counterpart; the model is the one dm-log-writes and xfstests' replay-log test
//! file systems with: only a flush makes earlier writes durable, and a device may persist any
//! part of the rest in any order, one sector at a time.

use super::replay::{DiscardAs, FileImage, WriteLog};

/// How one pending entry lands in a crash image.
#[derive(Clone, Debug)]
pub enum Landing {
    /// Every sector of the entry (a discard zeroes or keeps its sectors as given).
    Whole(DiscardAs),
    /// Only these sectors of a write (counted from its first).
    Torn(Vec<u64>),
}

/// One crash image: a durable prefix of the log plus some pending entries.
#[derive(Clone, Debug)]
pub struct CrashState {
    /// Entries `0..durable` are all on disk (it is 0 or one past a flush entry).
    pub durable: usize,
    /// The end of the epoch the pending entries come from (the next flush, or the log's end).
    pub epoch_end: usize,
    /// Pending entries (indices into the log) in the order they land.
    pub pending: Vec<(usize, Landing)>,
    /// How the state was chosen: "prefix", "random" or "torn".
    pub kind: &'static str,
}

impl CrashState {
    /// The state's image, built on `prefix` (the file with entries `0..durable` replayed).
    pub fn build(&self, log: &WriteLog, prefix: &FileImage) -> FileImage {
        let mut img = prefix.clone();
        for (i, landing) in &self.pending {
            let e = &log.entries[*i];
            match landing {
                Landing::Whole(discard) => img.apply(log, e, *discard),
                Landing::Torn(sectors) => {
                    for &s in sectors {
                        img.apply_sector(log, e, s, DiscardAs::Zeroes);
                    }
                }
            }
        }
        img
    }

    /// A short description that names the state in reports.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .pending
            .iter()
            .map(|(i, l)| match l {
                Landing::Whole(DiscardAs::Kept) => format!("{i}(kept)"),
                Landing::Whole(_) => i.to_string(),
                Landing::Torn(s) => format!("{i}{s:?}"),
            })
            .collect();
        format!(
            "{} state: entries 0..{} + [{}]",
            self.kind,
            self.durable,
            parts.join(" ")
        )
    }
}

/// How many states to draw per epoch besides its prefix.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Random subsets/orders per epoch.
    pub random: usize,
    /// Torn-write states per epoch.
    pub torn: usize,
}

/// The epochs of a log: `(durable, epoch_end)` for the start of the log and after every
/// flush; each epoch's pending entries are `durable..epoch_end`.
pub fn epochs(log: &WriteLog) -> Vec<(usize, usize)> {
    let flushes = log.flushes();
    let starts = std::iter::once(0).chain(flushes.iter().map(|f| f + 1));
    starts
        .map(|start| {
            let end = flushes
                .iter()
                .copied()
                .find(|&f| f >= start)
                .unwrap_or(log.entries.len());
            (start, end)
        })
        .collect()
}

/// The states of one epoch: its prefix, then `budget` random and torn states.
pub fn epoch_states(
    log: &WriteLog,
    (durable, epoch_end): (usize, usize),
    budget: Budget,
    rng: &mut fastrand::Rng,
) -> Vec<CrashState> {
    let writes: Vec<usize> = (durable..epoch_end)
        .filter(|&i| log.entries[i].is_write())
        .collect();
    let state = |pending, kind| CrashState {
        durable,
        epoch_end,
        pending,
        kind,
    };
    let mut states = vec![state(Vec::new(), "prefix")];
    if writes.is_empty() {
        return states;
    }
    if epoch_end == log.entries.len() {
        // A log that ends without a flush: the whole tail landing in order is a state too.
        let all = writes
            .iter()
            .map(|&i| (i, Landing::Whole(DiscardAs::Zeroes)))
            .collect();
        states.push(state(all, "prefix"));
    }
    for _ in 0..budget.random {
        let mut chosen: Vec<usize> = writes.iter().copied().filter(|_| rng.bool()).collect();
        rng.shuffle(&mut chosen);
        let pending = chosen
            .into_iter()
            .map(|i| (i, random_landing(log, i, rng)))
            .collect();
        states.push(state(pending, "random"));
    }
    let tearable: Vec<usize> = writes
        .iter()
        .copied()
        .filter(|&i| log.entries[i].entry.nr_sectors > 1 && !log.entries[i].is_discard())
        .collect();
    for _ in 0..budget.torn.min(tearable.len() * 4) {
        let victim = tearable[rng.usize(..tearable.len())];
        let mut pending: Vec<(usize, Landing)> = writes
            .iter()
            .copied()
            .take_while(|&i| i < victim)
            .map(|i| (i, Landing::Whole(DiscardAs::Zeroes)))
            .collect();
        pending.push((victim, Landing::Torn(torn_sectors(log, victim, rng))));
        states.push(state(pending, "torn"));
    }
    states
}

/// Calls `judge` with every distinct crash state of `log` over the file `base` (the file
/// before the first entry) and the state's image, epoch by epoch; `seed` fixes the draw.
pub fn explore(
    log: &WriteLog,
    mut base: FileImage,
    budget: Budget,
    seed: u64,
    mut judge: impl FnMut(&CrashState, &FileImage),
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seen = std::collections::HashSet::new();
    let mut applied = 0;
    for epoch in epochs(log) {
        for e in &log.entries[applied..epoch.0] {
            base.apply(log, e, DiscardAs::Zeroes);
        }
        applied = epoch.0;
        for state in epoch_states(log, epoch, budget, &mut rng) {
            let img = state.build(log, &base);
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&img.0, &mut h);
            if seen.insert(std::hash::Hasher::finish(&h)) {
                judge(&state, &img);
            }
        }
    }
}

/// A pending entry lands whole (a discard zeroing or keeping), or, one time in four, torn.
fn random_landing(log: &WriteLog, i: usize, rng: &mut fastrand::Rng) -> Landing {
    let e = &log.entries[i];
    if e.is_discard() {
        return Landing::Whole(if rng.bool() {
            DiscardAs::Zeroes
        } else {
            DiscardAs::Kept
        });
    }
    if e.entry.nr_sectors > 1 && rng.u8(..4) == 0 {
        return Landing::Torn(torn_sectors(log, i, rng));
    }
    Landing::Whole(DiscardAs::Zeroes)
}

/// A proper, non-empty subset of a write's sectors (each kept with probability 1/2).
fn torn_sectors(log: &WriteLog, i: usize, rng: &mut fastrand::Rng) -> Vec<u64> {
    let n = log.entries[i].entry.nr_sectors;
    loop {
        let kept: Vec<u64> = (0..n).filter(|_| rng.bool()).collect();
        if !kept.is_empty() && (kept.len() as u64) < n {
            return kept;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::filters::blklogwrites::log_format::{LogEntry, LogSuper, LOG_FLUSH_FLAG};

    /// A log of `(sector, nr_sectors, flush)` entries whose data bytes are the entry's index+1.
    fn log(entries: &[(u64, u64, bool)]) -> WriteLog {
        let mut bytes = LogSuper {
            nr_entries: entries.len() as u64,
            sectorsize: 512,
        }
        .encode();
        for (n, &(sector, nr_sectors, flush)) in entries.iter().enumerate() {
            let flags = if flush { LOG_FLUSH_FLAG } else { 0 };
            let e = LogEntry {
                sector,
                nr_sectors,
                flags,
                data_len: 0,
            };
            bytes.extend(e.encode(512));
            bytes.extend(vec![n as u8 + 1; nr_sectors as usize * 512]);
        }
        WriteLog::parse(bytes).unwrap()
    }

    #[test]
    fn epochs_split_at_flushes() {
        let l = log(&[(0, 1, false), (0, 0, true), (1, 2, false), (3, 1, false)]);
        assert_eq!(epochs(&l), vec![(0, 1), (2, 4)]);
    }

    #[test]
    fn states_are_reproducible_and_tear_only_pending_writes() {
        let l = log(&[(0, 1, false), (0, 0, true), (1, 4, false), (5, 2, false)]);
        let budget = Budget {
            random: 20,
            torn: 5,
        };
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            epoch_states(&l, (2, 4), budget, &mut rng)
                .iter()
                .map(|s| s.describe())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let mut rng = fastrand::Rng::with_seed(1);
        let states = epoch_states(&l, (2, 4), budget, &mut rng);
        assert_eq!(states.len(), 2 + 20 + 5, "prefix, whole tail, random, torn");
        let prefix = FileImage(vec![9; 512]);
        for s in states.iter().filter(|s| s.kind == "torn") {
            let img = s.build(&l, &prefix);
            assert_eq!(img.0[..512], [9; 512], "durable data is never torn");
            let (_, Landing::Torn(sectors)) = s.pending.last().unwrap() else {
                panic!("{}", s.describe());
            };
            let n = l.entries[s.pending.last().unwrap().0].entry.nr_sectors as usize;
            assert!(!sectors.is_empty() && sectors.len() < n);
        }
    }
}
