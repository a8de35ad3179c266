//! Checkers over a recorded history.
//!
//! [`linearizable`] decides, key by key, whether the reads, writes, deletes and
//! compare-and-sets could have taken effect one at a time, each at some instant between its
//! invocation and its completion, as a single register would (Wing & Gong's search with
//! Lowe's memoization, as Knossos and Porcupine do). Operations whose outcome is unknown
//! ([`Outcome::Info`]) may have taken effect at any instant after their invocation, or never.

use crate::history::{Call, Op, Outcome};
use std::collections::{BTreeMap, HashSet};

/// Why a key's history is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No order of the operations explains what the clients saw.
    NotLinearizable {
        /// The operation that could not be placed, and those concurrent with it.
        around: Vec<Op>,
    },
    /// The search gave up after this many states (the history is too concurrent).
    Unknown(usize),
}

/// The register after `op`, if `op` can take effect on `state`.
fn step(state: Option<u64>, op: &Op) -> Option<Option<u64>> {
    match (&op.call, &op.outcome) {
        (Call::Read, Outcome::Ok(v)) => (state == *v).then_some(state),
        (Call::Write(v), _) => Some(Some(*v)),
        (Call::Delete, _) => Some(None),
        (Call::Cas { expect, new }, Outcome::Swapped(true)) => (state == *expect).then_some(Some(*new)),
        (Call::Cas { expect, .. }, Outcome::Swapped(false)) => (state != *expect).then_some(state),
        // An unknown CAS that did not swap changed nothing: the same as never applying it.
        (Call::Cas { expect, new }, Outcome::Info) => (state == *expect).then_some(Some(*new)),
        _ => None,
    }
}

/// The operations of one key, split for the search: `required` (known outcomes) and
/// `unknown` (may be placed or not), each as indices into `ops` in invocation order.
struct Search<'a> {
    ops: &'a [Op],
    required: Vec<usize>,
    unknown: Vec<usize>,
}

/// One node of the search. Which ops are placed is kept small: every required op before
/// position `first` (of `required`), those at the positions in `ahead`, and the unknown
/// ops at the positions in `unknown` (of `Search::unknown`); plus the register's value.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Node {
    first: usize,
    ahead: Vec<u32>,
    unknown: Vec<u32>,
    state: Option<u64>,
}

/// What an op is, for the search: a required op at a position of `required`, or an
/// unknown one at a position of `unknown`.
#[derive(Clone, Copy)]
enum Pick {
    Required(usize),
    Unknown(usize),
}

impl Search<'_> {
    /// Operations that may take effect next: not placed yet, and invoked before every
    /// unplaced required operation completed. Only the window from the first unplaced
    /// required op to the earliest pending completion is looked at: an op invoked after a
    /// completion time also completes after it (the history is sorted by invocation).
    fn candidates(&self, n: &Node) -> Vec<Pick> {
        let mut out = Vec::new();
        let mut first_return = u64::MAX;
        for pos in n.first..self.required.len() {
            let op = &self.ops[self.required[pos]];
            if op.invoked > first_return {
                break;
            }
            if !n.ahead.contains(&(pos as u32)) {
                out.push(Pick::Required(pos));
                first_return = first_return.min(op.completed);
            }
        }
        for (pos, &i) in self.unknown.iter().enumerate() {
            if self.ops[i].invoked > first_return {
                break;
            }
            if !n.unknown.contains(&(pos as u32)) {
                out.push(Pick::Unknown(pos));
            }
        }
        out
    }

    fn op(&self, p: Pick) -> &Op {
        match p {
            Pick::Required(pos) => &self.ops[self.required[pos]],
            Pick::Unknown(pos) => &self.ops[self.unknown[pos]],
        }
    }

    /// `n` with `p` placed and the register at `state`.
    fn place(&self, n: &Node, p: Pick, state: Option<u64>) -> Node {
        let mut next = Node { state, ..n.clone() };
        match p {
            Pick::Required(pos) if pos == next.first => {
                next.first += 1;
                while let Some(at) = next.ahead.iter().position(|&a| a as usize == next.first) {
                    next.ahead.swap_remove(at);
                    next.first += 1;
                }
                next.ahead.sort_unstable();
            }
            Pick::Required(pos) => {
                let at = next.ahead.partition_point(|&a| (a as usize) < pos);
                next.ahead.insert(at, pos as u32);
            }
            Pick::Unknown(pos) => {
                let at = next.unknown.partition_point(|&a| (a as usize) < pos);
                next.unknown.insert(at, pos as u32);
            }
        }
        next
    }
}

/// Check one key's operations (any order; a fresh key starts absent). `budget` bounds the
/// states explored.
pub fn check_key(ops: &[Op], budget: usize) -> Result<(), Verdict> {
    let mut ops: Vec<Op> = ops
        .iter()
        .filter(|o| o.outcome != Outcome::Fail && !(o.call == Call::Read && o.outcome == Outcome::Info))
        .cloned()
        .collect();
    ops.sort_by_key(|o| (o.invoked, o.completed));
    let (required, unknown): (Vec<usize>, Vec<usize>) = (0..ops.len()).partition(|&i| ops[i].outcome != Outcome::Info);
    let s = Search { ops: &ops, required, unknown };
    let start = Node { first: 0, ahead: vec![], unknown: vec![], state: None };
    let mut stack = vec![start];
    let mut seen: HashSet<Node> = HashSet::new();
    let (mut deepest_first, mut deepest_count) = (0, 0);
    while let Some(n) = stack.pop() {
        if n.first == s.required.len() {
            return Ok(());
        }
        if seen.len() > budget {
            return Err(Verdict::Unknown(seen.len()));
        }
        if n.first + n.ahead.len() > deepest_count {
            (deepest_first, deepest_count) = (n.first, n.first + n.ahead.len());
        }
        // Pushed in reverse, so the earliest required op is tried first and unknown ones last.
        for p in s.candidates(&n).into_iter().rev() {
            let Some(state) = step(n.state, s.op(p)) else { continue };
            let next = s.place(&n, p, state);
            if seen.insert(next.clone()) {
                stack.push(next);
            }
        }
    }
    let at = s.required.get(deepest_first).copied().unwrap_or(0);
    let stuck = &ops[at];
    // The op that fits nowhere first, then the known ops overlapping it, then unknown ones.
    let overlapping = |o: &&Op| o.invoked <= stuck.completed && o.completed >= stuck.invoked && *o != stuck;
    let mut around = vec![stuck.clone()];
    around.extend(ops.iter().filter(overlapping).filter(|o| o.outcome != Outcome::Info).cloned());
    around.extend(ops.iter().filter(overlapping).filter(|o| o.outcome == Outcome::Info).cloned());
    Err(Verdict::NotLinearizable { around })
}

/// Check every key of `history`; the first failure per key.
pub fn linearizable(history: &[Op], budget: usize) -> BTreeMap<String, Verdict> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    by_key.into_iter().filter_map(|(k, ops)| check_key(&ops, budget).err().map(|v| (k.to_string(), v))).collect()
}

/// Every client's completed operations must see non-decreasing store revisions (`revisions`
/// holds, per op of `history`, the header revision of its response, 0 if none).
pub fn revisions_monotonic(history: &[Op], revisions: &[i64]) -> Result<(), String> {
    let mut last: BTreeMap<usize, (i64, &Op)> = BTreeMap::new();
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| history[i].completed);
    for i in order {
        let (op, rev) = (&history[i], revisions[i]);
        if rev == 0 {
            continue;
        }
        if let Some((prev, prev_op)) = last.get(&op.client) {
            if rev < *prev {
                return Err(format!("client {} saw revision {rev} after {prev}: {prev_op:?} then {op:?}", op.client));
            }
        }
        last.insert(op.client, (rev, op));
    }
    Ok(())
}

/// Lock safety by fencing: `writes` are (fencing token, revision of the write) of the
/// writes made while holding the lock. In revision order the tokens must never go down: a
/// holder whose lock was taken over may not write after the new holder did.
pub fn fencing(writes: &mut [(i64, i64)]) -> Result<(), String> {
    writes.sort_by_key(|&(_, rev)| rev);
    match writes.windows(2).find(|w| w[1].0 < w[0].0) {
        Some(w) => Err(format!(
            "lock fencing violated: token {} wrote at revision {} after token {} wrote at revision {}",
            w[1].0, w[1].1, w[0].0, w[0].1
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: Call, outcome: Outcome, invoked: u64, completed: u64) -> Op {
        Op { client, key: "k".into(), call, outcome, invoked, completed }
    }

    fn ok(h: &[Op]) -> bool {
        check_key(h, 1_000_000).is_ok()
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let h = [
            op(0, Call::Write(1), Outcome::Ok(None), 0, 10),
            op(1, Call::Read, Outcome::Ok(Some(1)), 11, 20),
            op(0, Call::Cas { expect: Some(1), new: 2 }, Outcome::Swapped(true), 21, 30),
            op(1, Call::Cas { expect: Some(1), new: 3 }, Outcome::Swapped(false), 31, 40),
            op(0, Call::Delete, Outcome::Ok(None), 41, 50),
            op(1, Call::Read, Outcome::Ok(None), 51, 60),
        ];
        assert!(ok(&h));
        // Overlapping write and reads: either order of the reads' values is fine.
        let h = [
            op(0, Call::Write(1), Outcome::Ok(None), 0, 100),
            op(1, Call::Read, Outcome::Ok(None), 10, 20),
            op(2, Call::Read, Outcome::Ok(Some(1)), 30, 40),
            op(1, Call::Read, Outcome::Ok(Some(1)), 50, 60),
        ];
        assert!(ok(&h));
    }

    #[test]
    fn a_stale_read_fails() {
        // The write completed before the read began; the read saw the old (absent) value.
        let h = [op(0, Call::Write(1), Outcome::Ok(None), 0, 10), op(1, Call::Read, Outcome::Ok(None), 20, 30)];
        assert!(matches!(check_key(&h, 1000), Err(Verdict::NotLinearizable { .. })));
    }

    #[test]
    fn reads_that_go_back_in_time_fail() {
        // Concurrent with a write, two reads in sequence: new value, then old value.
        let h = [
            op(0, Call::Write(1), Outcome::Ok(None), 0, 5),
            op(0, Call::Write(2), Outcome::Ok(None), 10, 100),
            op(1, Call::Read, Outcome::Ok(Some(2)), 20, 30),
            op(1, Call::Read, Outcome::Ok(Some(1)), 40, 50),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn a_cas_that_swapped_on_a_wrong_value_fails() {
        let h = [
            op(0, Call::Write(1), Outcome::Ok(None), 0, 10),
            op(1, Call::Cas { expect: Some(7), new: 2 }, Outcome::Swapped(true), 20, 30),
        ];
        assert!(!ok(&h));
        // Two CAS from the same value both succeeding, one after the other: a lost update.
        let h = [
            op(0, Call::Write(1), Outcome::Ok(None), 0, 10),
            op(1, Call::Cas { expect: Some(1), new: 2 }, Outcome::Swapped(true), 20, 30),
            op(2, Call::Cas { expect: Some(1), new: 3 }, Outcome::Swapped(true), 40, 50),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn unknown_outcomes_may_apply_late_or_never() {
        // A timed-out write read back long after: it applied.
        let h = [
            op(0, Call::Write(1), Outcome::Info, 0, u64::MAX),
            op(1, Call::Read, Outcome::Ok(None), 10, 20),
            op(1, Call::Read, Outcome::Ok(Some(1)), 1_000, 1_010),
        ];
        assert!(ok(&h));
        // Or never: nobody saw it.
        let h = [op(0, Call::Write(1), Outcome::Info, 0, u64::MAX), op(1, Call::Read, Outcome::Ok(None), 10, 20)];
        assert!(ok(&h));
        // But not before its invocation.
        let h = [op(1, Call::Read, Outcome::Ok(Some(1)), 0, 5), op(0, Call::Write(1), Outcome::Info, 10, u64::MAX)];
        assert!(!ok(&h));
        // A refused write never applied: reading its value fails.
        let h = [op(0, Call::Write(1), Outcome::Fail, 0, 5), op(1, Call::Read, Outcome::Ok(Some(1)), 10, 20)];
        assert!(!ok(&h));
    }

    #[test]
    fn every_key_is_checked_and_reported() {
        let mut h = vec![op(0, Call::Write(1), Outcome::Ok(None), 0, 10), op(1, Call::Read, Outcome::Ok(None), 20, 30)];
        h.push(Op { key: "other".into(), ..op(0, Call::Write(5), Outcome::Ok(None), 0, 10) });
        let bad = linearizable(&h, 1000);
        assert_eq!(bad.keys().collect::<Vec<_>>(), ["k"]);
        let Verdict::NotLinearizable { around } = &bad["k"] else { panic!("expected a violation") };
        assert!(around.iter().any(|o| o.call == Call::Read), "{around:?}");
    }

    #[test]
    fn fenced_writes_in_token_order() {
        assert!(fencing(&mut [(5, 10), (5, 11), (9, 12)]).is_ok());
        assert!(fencing(&mut [(9, 12), (5, 10)]).is_ok(), "sorted by revision first");
        assert!(fencing(&mut [(5, 10), (9, 12), (5, 13)]).is_err(), "an old holder wrote after the new one");
    }

    #[test]
    fn revision_order_per_client() {
        let h = [op(0, Call::Read, Outcome::Ok(None), 0, 10), op(0, Call::Read, Outcome::Ok(None), 20, 30)];
        assert!(revisions_monotonic(&h, &[5, 6]).is_ok());
        assert!(revisions_monotonic(&h, &[6, 5]).is_err());
    }

    #[test]
    fn long_concurrent_histories_finish_quickly() {
        // 8 clients, 16,000 ops with heavy overlap and some unknown writes (a long run's
        // share of one key): the windowed, memoized search must stay linear-ish.
        let mut h = Vec::new();
        let mut value = 0;
        for round in 0..2_000u64 {
            if round % 100 == 7 {
                h.push(op(9, Call::Write(1_000_000 + round), Outcome::Info, round * 100, u64::MAX));
            }
            for c in 0..8usize {
                let t = round * 100 + c as u64;
                if c % 2 == 0 {
                    value += 1;
                    h.push(op(c, Call::Write(value), Outcome::Ok(None), t, t + 60));
                } else {
                    h.push(op(c, Call::Read, Outcome::Ok(Some(value)), t, t + 60));
                }
            }
        }
        assert!(check_key(&h, 2_000_000).is_ok());
    }
}
