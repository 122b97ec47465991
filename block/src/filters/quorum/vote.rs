//! The vote: which of the children's answers a quorum node returns (quorum_vote,
//! quorum_count_vote, quorum_get_vote_winner and quorum_vote_error in QEMU's
//! block/quorum.c).
//!
//! Each child that answered gives one vote to the version it returned; the version with the
//! most votes wins if it has at least `vote-threshold` of them. QEMU hashes each read with
//! SHA-256 and votes on the hashes; here the answers are compared directly, which groups
//! them the same way without relying on a hash. Errors are voted on as well: when too few
//! children succeed, the error most of the failing children returned is the request's.

use crate::error::Error;

/// One distinct answer and the children that gave it (QuorumVoteVersion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The first child that gave this answer: where its data is read from.
    pub index: usize,
    /// Every child that gave it, in the order they were counted.
    pub voters: Vec<usize>,
}

/// Groups `voters` (child indexes) into versions, `same(a, b)` telling whether children `a`
/// and `b` gave the same answer. Versions come out in the order they were first seen.
pub fn count_votes(voters: &[usize], same: impl Fn(usize, usize) -> bool) -> Vec<Version> {
    let mut versions: Vec<Version> = Vec::new();
    for &child in voters {
        match versions.iter_mut().find(|v| same(v.index, child)) {
            Some(version) => version.voters.push(child),
            None => versions.push(Version {
                index: child,
                voters: vec![child],
            }),
        }
    }
    versions
}

/// The version with the most votes (quorum_get_vote_winner). QEMU keeps its versions newest
/// first and takes the first maximum it meets, so of versions with as many votes each, the
/// one seen last wins; the same tie-break is kept here so that both pick the same data.
pub fn winner(versions: &[Version]) -> Option<&Version> {
    versions
        .iter()
        .rev()
        .fold(None, |best: Option<&Version>, v| match best {
            Some(b) if b.voters.len() >= v.voters.len() => Some(b),
            _ => Some(v),
        })
}

/// The error a request fails with when too few children succeeded (quorum_vote_error):
/// the most common errno among the failures, with the message of the first child that
/// returned it. None when nothing failed.
pub fn vote_error(failures: &[(usize, Error)]) -> Option<Error> {
    let indexes: Vec<usize> = (0..failures.len()).collect();
    let versions = count_votes(&indexes, |a, b| {
        failures[a].1.errno() == failures[b].1.errno()
    });
    winner(&versions).map(|v| failures[v.index].1.clone())
}

/// What a read through a quorum returns, once every child answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadVerdict {
    /// The data of child `index`; `bad` are the children whose successful reads disagreed
    /// with it (reported, and rewritten with rewrite-corrupted=on).
    Data {
        /// The child whose buffer holds the winning data.
        index: usize,
        /// The children that returned other data.
        bad: Vec<usize>,
    },
    /// No version reached the threshold (QUORUM_FAILURE, -EIO).
    NoQuorum,
}

/// Decides a read among the children that succeeded (`ok`, at least `threshold` of them:
/// the caller votes on errors otherwise). When all of them agree no vote is needed; else the
/// most common version wins if it has `threshold` votes.
pub fn decide_read(
    ok: &[usize],
    threshold: usize,
    same: impl Fn(usize, usize) -> bool,
) -> ReadVerdict {
    let Some(&first) = ok.first() else {
        return ReadVerdict::NoQuorum;
    };
    if ok[1..].iter().all(|&other| same(first, other)) {
        return ReadVerdict::Data {
            index: first,
            bad: Vec::new(),
        };
    }
    let versions = count_votes(ok, &same);
    match winner(&versions) {
        Some(w) if w.voters.len() >= threshold => ReadVerdict::Data {
            index: w.index,
            bad: versions
                .iter()
                .filter(|v| v.index != w.index)
                .flat_map(|v| v.voters.iter().copied())
                .collect(),
        },
        _ => ReadVerdict::NoQuorum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `decide_read` over children that returned these values (None: the read failed).
    fn read(answers: &[Option<u8>], threshold: usize) -> ReadVerdict {
        let ok: Vec<usize> = (0..answers.len())
            .filter(|&i| answers[i].is_some())
            .collect();
        decide_read(&ok, threshold, |a, b| answers[a] == answers[b])
    }

    #[test]
    fn a_corrupted_child_is_out_voted() {
        assert_eq!(
            read(&[Some(0x32), Some(0x42), Some(0x32)], 2),
            ReadVerdict::Data {
                index: 0,
                bad: vec![1]
            }
        );
    }

    #[test]
    fn agreement_needs_no_vote() {
        assert_eq!(
            read(&[Some(7), None, Some(7)], 2),
            ReadVerdict::Data {
                index: 0,
                bad: vec![]
            }
        );
    }

    #[test]
    fn no_version_reaching_the_threshold_is_no_quorum() {
        assert_eq!(
            read(&[Some(0x41), Some(0x42), Some(0x32)], 2),
            ReadVerdict::NoQuorum
        );
        assert_eq!(
            read(&[Some(1), Some(2), Some(1), Some(2)], 3),
            ReadVerdict::NoQuorum
        );
    }

    #[test]
    fn ties_go_to_the_version_seen_last_as_in_qemu() {
        assert_eq!(
            read(&[Some(1), Some(2)], 1),
            ReadVerdict::Data {
                index: 1,
                bad: vec![0]
            }
        );
        assert_eq!(
            read(&[Some(1), Some(2), Some(2), Some(1)], 2),
            ReadVerdict::Data {
                index: 1,
                bad: vec![0, 3]
            }
        );
    }

    #[test]
    fn the_most_common_error_wins() {
        let failures = vec![
            (0, Error::from_errno(libc::ENOSPC)),
            (1, Error::new(libc::EIO, "first EIO")),
            (2, Error::from_errno(libc::EIO)),
        ];
        let e = vote_error(&failures).unwrap();
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(e.message(), Some("first EIO"));
        assert!(vote_error(&[]).is_none());
    }
}
