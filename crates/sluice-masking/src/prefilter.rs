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
#[derive(Clone, Copy, PartialEq, Eq)]
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

    fn intersects_range(&self, start: u8, end: u8) -> bool {
        (start..=end).any(|b| self.contains(b))
    }
}

/// How many leading positions of a match [`Facts::leading`] describes.
pub(crate) const LEADING: usize = 4;

/// The facts about one pattern.
#[derive(Clone, Copy)]
pub(crate) struct Facts {
    /// Every match starts with one of these bytes.
    pub(crate) first: ByteSet,
    /// `leading[i]`: the bytes a match can have at offset `i`. `ALL` from the
    /// first offset at which a match can already have ended.
    pub(crate) leading: [ByteSet; LEADING],
}

impl Facts {
    /// Nothing known.
    const NONE: Facts = Facts {
        first: ByteSet::ALL,
        leading: [ByteSet::ALL; LEADING],
    };

    /// Whether a match of the pattern can start at `hay[s]` and end by
    /// `end`, as far as its leading bytes tell.
    pub(crate) fn may_start_at(&self, hay: &[u8], s: usize, end: usize) -> bool {
        for (i, set) in self.leading.iter().enumerate() {
            if *set == ByteSet::ALL {
                return true;
            }
            match hay.get(s + i) {
                Some(&b) if s + i < end && set.contains(b) => {}
                _ => return false,
            }
        }
        true
    }

    pub(crate) fn of(pattern: &str) -> Facts {
        let nfa = thompson::Compiler::new()
            .configure(thompson::Config::new().which_captures(WhichCaptures::None))
            .build(pattern);
        match nfa {
            Ok(nfa) if !reaches_match(&nfa, &ByteSet::EMPTY) => Facts {
                first: first_bytes(&nfa),
                leading: leading_bytes(&nfa),
            },
            // Matches the empty string (never for a detector): no facts.
            _ => Facts::NONE,
        }
    }
}

/// Bytes that can start a match: the byte transitions reachable from the
/// start state through epsilon states alone.
fn first_bytes(nfa: &NFA) -> ByteSet {
    let mut set = ByteSet::EMPTY;
    walk(nfa, &ByteSet::EMPTY, |state| match state {
        State::ByteRange { trans } => set.insert_range(trans.start, trans.end),
        State::Sparse(sparse) => {
            for t in sparse.transitions.iter() {
                set.insert_range(t.start, t.end);
            }
        }
        State::Dense(dense) => {
            for (b, next) in (0..=255u8).zip(dense.transitions.iter()) {
                if *next != StateID::ZERO {
                    set.insert(b);
                }
            }
        }
        // Reached without consuming a byte: anything may start a match.
        State::Match { .. } => set = ByteSet::ALL,
        _ => {}
    });
    set
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
            match nfa.state(id) {
                // A match can end before this offset: anything may follow.
                State::Match { .. } => return sets,
                State::ByteRange { trans } => {
                    here.insert_range(trans.start, trans.end);
                    next.push(trans.next);
                }
                State::Sparse(sparse) => {
                    for t in sparse.transitions.iter() {
                        here.insert_range(t.start, t.end);
                        next.push(t.next);
                    }
                }
                State::Dense(dense) => {
                    for (b, to) in (0..=255u8).zip(dense.transitions.iter()) {
                        if *to != StateID::ZERO {
                            here.insert(b);
                            next.push(*to);
                        }
                    }
                }
                _ => {}
            }
        }
        *set = here;
        frontier = closure(nfa, next);
    }
    sets
}

/// The states reachable from `from` through epsilon transitions (look-around
/// assumed to hold), `from` included, without duplicates.
fn closure(nfa: &NFA, mut stack: Vec<StateID>) -> Vec<StateID> {
    let mut seen = vec![false; nfa.states().len()];
    let mut out = Vec::new();
    while let Some(id) = stack.pop() {
        let Some(done) = seen.get_mut(id.as_usize()) else {
            continue;
        };
        if std::mem::replace(done, true) {
            continue;
        }
        out.push(id);
        match nfa.state(id) {
            State::Look { next, .. } | State::Capture { next, .. } => stack.push(*next),
            State::Union { alternates } => stack.extend(alternates.iter().copied()),
            State::BinaryUnion { alt1, alt2 } => stack.extend([*alt1, *alt2]),
            _ => {}
        }
    }
    out
}

/// Whether a match state is reachable from the start consuming only
/// `allowed` bytes (look-around assumed to hold).
fn reaches_match(nfa: &NFA, allowed: &ByteSet) -> bool {
    let mut found = false;
    walk(nfa, allowed, |state| {
        found |= matches!(state, State::Match { .. });
    });
    found
}
/// Visits every state reachable from the anchored start through epsilon
/// transitions and byte transitions on `allowed` bytes.
fn walk(nfa: &NFA, allowed: &ByteSet, mut visit: impl FnMut(&State)) {
    let mut seen = vec![false; nfa.states().len()];
    let mut stack = vec![nfa.start_anchored()];
    while let Some(id) = stack.pop() {
        let Some(done) = seen.get_mut(id.as_usize()) else {
            continue;
        };
        if std::mem::replace(done, true) {
            continue;
        }
        let state = nfa.state(id);
        visit(state);
        match state {
            State::ByteRange { trans } => {
                if allowed.intersects_range(trans.start, trans.end) {
                    stack.push(trans.next);
                }
            }
            State::Sparse(sparse) => stack.extend(
                sparse
                    .transitions
                    .iter()
                    .filter(|t| allowed.intersects_range(t.start, t.end))
                    .map(|t| t.next),
            ),
            State::Dense(dense) => stack.extend(
                (0..=255u8)
                    .zip(dense.transitions.iter())
                    .filter(|&(b, next)| allowed.contains(b) && *next != StateID::ZERO)
                    .map(|(_, next)| *next),
            ),
            State::Look { next, .. } | State::Capture { next, .. } => stack.push(*next),
            State::Union { alternates } => stack.extend(alternates.iter().copied()),
            State::BinaryUnion { alt1, alt2 } => stack.extend([*alt1, *alt2]),
            State::Fail | State::Match { .. } => {}
        }
    }
}
