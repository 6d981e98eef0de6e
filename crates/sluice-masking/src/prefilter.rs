//! What every match of a pattern must look like, read off the pattern's own
//! Thompson NFA, so the engine can skip work without changing what it masks.
//!
//! Each fact is an over-approximation of the pattern's language, computed
//! by walking the NFA with look-around assertions (`\b`) treated as always
//! true, which can only add matches. So a fact never rules out a real
//! match, for built-in and custom detectors alike; a pattern whose NFA
//! cannot be built here gets no fact (everything is possible).

use regex_automata::nfa::thompson::{self, State, WhichCaptures, NFA};
use regex_automata::util::primitives::StateID;

/// A set of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSet([u64; 4]);

impl ByteSet {
    pub(crate) const EMPTY: ByteSet = ByteSet([0; 4]);
    pub(crate) const ALL: ByteSet = ByteSet([u64::MAX; 4]);

    pub(crate) fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }

    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    fn insert_range(&mut self, start: u8, end: u8) {
        for b in start..=end {
            self.insert(b);
        }
    }

    fn remove(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] &= !(1 << (b & 63));
    }

    fn intersects_range(&self, start: u8, end: u8) -> bool {
        (start..=end).any(|b| self.contains(b))
    }

    fn iter(self) -> impl Iterator<Item = u8> {
        (0..=255u8).filter(move |&b| self.contains(b))
    }
}

/// How many leading positions of a match [`Facts::leading`] describes.
pub(crate) const LEADING: usize = 4;

/// The facts about one pattern.
#[derive(Clone)]
pub(crate) struct Facts {
    /// `leading[i]`: the bytes a match can have at offset `i` (`leading[0]`:
    /// every match starts with one of them). `ALL` from the first offset at
    /// which a match can already have ended.
    pub(crate) leading: [ByteSet; LEADING],
    /// How many of `leading` are not `ALL`: the offsets worth checking.
    depth: usize,
    /// Every byte a match can contain.
    pub(crate) bytes: ByteSet,
    /// The bytes every match contains, each of them.
    pub(crate) required: Vec<u8>,
    /// The fewest bytes a match has.
    pub(crate) min_len: usize,
}

impl Facts {
    /// Nothing known.
    const NONE: Facts = Facts {
        leading: [ByteSet::ALL; LEADING],
        depth: 0,
        bytes: ByteSet::ALL,
        required: Vec::new(),
        min_len: 0,
    };

    /// Whether a match of the pattern can start at `hay[s]` and end by
    /// `end`, as far as its leading bytes tell.
    pub(crate) fn may_start_at(&self, hay: &[u8], s: usize, end: usize) -> bool {
        for (i, set) in self.leading[..self.depth].iter().enumerate() {
            match hay.get(s + i) {
                Some(&b) if s + i < end && set.contains(b) => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether a match can start in `from..at` and run on past `at`, within
    /// `hay[..bound]`: it would consist of match bytes from its start through
    /// `hay[at]`, be at least `min_len` long and contain the required bytes.
    pub(crate) fn may_span(&self, hay: &[u8], from: usize, at: usize, bound: usize) -> bool {
        let inside = |i: usize| i < bound && hay.get(i).is_some_and(|&b| self.bytes.contains(b));
        // Cheapest first: the bytes on both sides of `at`, then whether the
        // required bytes occur at all.
        if at <= from || !inside(at) || !inside(at - 1) {
            return false;
        }
        let Some(window) = hay.get(from..bound) else {
            return true;
        };
        if !self.required.iter().all(|r| window.contains(r)) {
            return false;
        }
        let mut first = at - 1;
        while first > from && inside(first - 1) {
            first -= 1;
        }
        let mut end = at + 1;
        while inside(end) {
            end += 1;
        }
        end - first >= self.min_len
            && hay
                .get(first..end)
                .is_some_and(|run| self.required.iter().all(|r| run.contains(r)))
            && (first..at).any(|s| self.may_start_at(hay, s, end))
    }

    pub(crate) fn of(pattern: &str) -> Facts {
        let nfa = thompson::Compiler::new()
            .configure(thompson::Config::new().which_captures(WhichCaptures::None))
            .build(pattern);
        match nfa {
            Ok(nfa) if !reaches_match(&nfa, &ByteSet::EMPTY) => {
                let bytes = all_bytes(&nfa);
                let leading = leading_bytes(&nfa);
                Facts {
                    leading,
                    depth: leading
                        .iter()
                        .take_while(|&&set| set != ByteSet::ALL)
                        .count(),
                    bytes,
                    required: required_bytes(&nfa, bytes),
                    min_len: min_len(&nfa),
                }
            }
            // Matches the empty string (never for a detector): no facts.
            _ => Facts::NONE,
        }
    }
}

/// The bytes possible at each of the first [`LEADING`] offsets of a match:
/// the states reachable from the start by exactly `i` bytes (any bytes,
/// look-around assumed to hold), and the bytes they move on.
fn leading_bytes(nfa: &NFA) -> [ByteSet; LEADING] {
    let mut sets = [ByteSet::ALL; LEADING];
    let mut frontier = closure(nfa, vec![nfa.start_anchored()]);
    for set in sets.iter_mut() {
        let mut here = ByteSet::EMPTY;
        let mut next = Vec::new();
        for &id in &frontier {
            let state = nfa.state(id);
            // A match can end before this offset: anything may follow.
            if matches!(state, State::Match { .. }) {
                return sets;
            }
            moves(state, |start, end, to| {
                here.insert_range(start, end);
                next.push(to);
            });
        }
        *set = here;
        frontier = closure(nfa, next);
    }
    sets
}

/// The union of every byte transition reachable from the start: a match
/// consists of these bytes only.
fn all_bytes(nfa: &NFA) -> ByteSet {
    let mut bytes = ByteSet::EMPTY;
    walk(
        nfa,
        vec![nfa.start_anchored()],
        &ByteSet::ALL,
        |_, state| {
            moves(state, |start, end, _| bytes.insert_range(start, end));
        },
    );
    bytes
}

/// The bytes without which no match is reachable: every match contains
/// each of them.
fn required_bytes(nfa: &NFA, bytes: ByteSet) -> Vec<u8> {
    bytes
        .iter()
        .filter(|&b| {
            let mut without = bytes;
            without.remove(b);
            !reaches_match(nfa, &without)
        })
        .collect()
}

/// The length of the shortest match, in bytes (look-around assumed to
/// hold): a breadth-first walk in which epsilon moves cost nothing.
fn min_len(nfa: &NFA) -> usize {
    let mut frontier = closure(nfa, vec![nfa.start_anchored()]);
    let mut seen = vec![false; nfa.states().len()];
    for len in 0..nfa.states().len() {
        let mut next = Vec::new();
        for &id in &frontier {
            if matches!(nfa.state(id), State::Match { .. }) {
                return len;
            }
            moves(nfa.state(id), |_, _, to| next.push(to));
        }
        next.retain(|id| !std::mem::replace(&mut seen[id.as_usize()], true));
        if next.is_empty() {
            break;
        }
        frontier = closure(nfa, next);
    }
    0
}

/// The states reachable from `from` through epsilon transitions (look-around
/// assumed to hold), `from` included, without duplicates.
fn closure(nfa: &NFA, from: Vec<StateID>) -> Vec<StateID> {
    let mut out = Vec::new();
    walk(nfa, from, &ByteSet::EMPTY, |id, _| out.push(id));
    out
}

/// Whether a match state is reachable from the start consuming only
/// `allowed` bytes (look-around assumed to hold).
fn reaches_match(nfa: &NFA, allowed: &ByteSet) -> bool {
    let mut found = false;
    walk(nfa, vec![nfa.start_anchored()], allowed, |_, state| {
        found |= matches!(state, State::Match { .. });
    });
    found
}

/// Visits every state reachable from `from` through epsilon transitions and
/// byte transitions on `allowed` bytes.
fn walk(
    nfa: &NFA,
    mut stack: Vec<StateID>,
    allowed: &ByteSet,
    mut visit: impl FnMut(StateID, &State),
) {
    let mut seen = vec![false; nfa.states().len()];
    while let Some(id) = stack.pop() {
        let Some(done) = seen.get_mut(id.as_usize()) else {
            continue;
        };
        if std::mem::replace(done, true) {
            continue;
        }
        let state = nfa.state(id);
        visit(id, state);
        moves(state, |start, end, to| {
            if allowed.intersects_range(start, end) {
                stack.push(to);
            }
        });
        match state {
            State::Look { next, .. } | State::Capture { next, .. } => stack.push(*next),
            State::Union { alternates } => stack.extend(alternates.iter().copied()),
            State::BinaryUnion { alt1, alt2 } => stack.extend([*alt1, *alt2]),
            _ => {}
        }
    }
}

/// A state's byte transitions, as `each(start, end, to)` per byte range.
fn moves(state: &State, mut each: impl FnMut(u8, u8, StateID)) {
    match state {
        State::ByteRange { trans } => each(trans.start, trans.end, trans.next),
        State::Sparse(sparse) => {
            for t in sparse.transitions.iter() {
                each(t.start, t.end, t.next);
            }
        }
        State::Dense(dense) => {
            for (b, to) in (0..=255u8).zip(dense.transitions.iter()) {
                // In a dense state, the zero id means no transition.
                if *to != StateID::ZERO {
                    each(b, b, *to);
                }
            }
        }
        _ => {}
    }
}
