//! A small regular-expression engine for header-route values.
//!
//! Why not the `regex` or `regex-lite` crates: the filter is downloaded and instantiated by every
//! sidecar, and regex-lite alone added ~50 KB (a quarter of the budget) to the .wasm. Header
//! routes need a modest, RE2-compatible subset, matched in linear time (no backtracking, so no
//! ReDoS from a hostile header). This engine compiles to a Thompson NFA and simulates it Pike-style
//! over the value's characters: O(len(value) x len(program)).
//!
//! Supported (RE2 meaning): literals; `.`; `[...]` and `[^...]` with ranges and escapes;
//! `\d \D \w \W \s \S` (ASCII, as in RE2); escaped metacharacters and `\t \n \r \f \v`; groups `(...)`, `(?:...)` and
//! named groups `(?P<n>...)`/`(?<n>...)` (captures are not reported); alternation `|`;
//! `* + ?` and `{n} {n,} {n,m}` (lazy forms accepted; they match the same set); `^` and `$`;
//! a leading `(?i)` for case-insensitive matching (ASCII). Anything else (backreferences,
//! lookaround, Unicode classes, other flags) is refused with a message, never misread.
//!
//! [`Regex::is_match`] is a FULL match, as Istio's VirtualService `regex` (Envoy `safe_regex`).

use std::fmt;

/// Upper bound on compiled instructions; counted repetitions expand, so this caps memory.
pub const MAX_PROGRAM: usize = 20_000;
/// Upper bound on a counted repetition's count.
pub const MAX_REPEAT: u32 = 1_000;
/// Upper bound on group nesting.
const MAX_NEST: usize = 64;

/// A compiled pattern.
#[derive(Clone)]
pub struct Regex {
    source: String,
    program: Vec<Inst>,
    case_insensitive: bool,
    /// A substring every matching text contains (see [`required_literal`]), with its search
    /// table built once.
    required: Option<Literal>,
}

/// A literal to search for, with its Knuth-Morris-Pratt failure table. `str::contains` rebuilds
/// its searcher (a two-way factorisation of the needle) on every call, which was most of the
/// prefilter's cost on a short header; this searches in one linear pass with nothing to set up.
#[derive(Clone)]
struct Literal {
    bytes: Vec<u8>,
    /// `fail[i]`: length of the longest proper border of `bytes[..=i]`.
    fail: Vec<usize>,
}

impl Literal {
    fn new(text: &str) -> Self {
        let bytes = text.as_bytes().to_vec();
        let mut fail = vec![0; bytes.len()];
        let mut k = 0;
        for i in 1..bytes.len() {
            while k > 0 && bytes.get(i) != bytes.get(k) {
                k = fail.get(k - 1).copied().unwrap_or(0);
            }
            if bytes.get(i) == bytes.get(k) {
                k += 1;
            }
            if let Some(f) = fail.get_mut(i) {
                *f = k;
            }
        }
        Self { bytes, fail }
    }

    /// Whether `hay` contains the literal; O(len(hay)) comparisons at most twice over.
    fn found_in(&self, hay: &[u8]) -> bool {
        let m = self.bytes.len();
        if m == 0 {
            return true;
        }
        let Some(&first) = self.bytes.first() else {
            return true;
        };
        let mut k = 0;
        for &b in hay {
            // The common case: no partial match, and the byte does not start one.
            if k == 0 && b != first {
                continue;
            }
            while k > 0 && self.bytes.get(k) != Some(&b) {
                k = self.fail.get(k - 1).copied().unwrap_or(0);
            }
            if self.bytes.get(k) == Some(&b) {
                k += 1;
                if k == m {
                    return true;
                }
            }
        }
        false
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.source)
    }
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexError(pub String);

impl fmt::Display for RegexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, RegexError> {
    Err(RegexError(msg.into()))
}

#[derive(Debug, Clone)]
enum Node {
    Empty,
    Class(Class),
    Start,
    End,
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

/// A set of characters: sorted inclusive ranges, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Class {
    ranges: Vec<(char, char)>,
    negated: bool,
}

impl Class {
    fn one(c: char) -> Self {
        Self {
            ranges: vec![(c, c)],
            negated: false,
        }
    }
    fn any_but_newline() -> Self {
        Self {
            ranges: vec![('\n', '\n')],
            negated: true,
        }
    }
    fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != self.negated
    }
    /// The one character this class matches, if it matches exactly one.
    fn single(&self) -> Option<char> {
        match self.ranges.as_slice() {
            [(lo, hi)] if lo == hi && !self.negated => Some(*lo),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Inst {
    Char(Class),
    Split(usize, usize),
    Jmp(usize),
    AssertStart,
    AssertEnd,
    Match,
}

impl Regex {
    /// Compiles `pattern`, refusing unsupported syntax with a reason.
    pub fn new(pattern: &str) -> Result<Self, RegexError> {
        let (case_insensitive, body) = match pattern.strip_prefix("(?i)") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let mut parser = Parser {
            chars: body.chars().collect(),
            pos: 0,
            depth: 0,
        };
        let node = parser.parse_alt()?;
        if parser.pos < parser.chars.len() {
            return err(format!("unexpected ')' at offset {}", parser.pos));
        }
        // Case-insensitive patterns match a lower-cased text: no literal is looked for there.
        let (node, required) = if case_insensitive {
            (fold_case(node), None)
        } else {
            let required = required_literal(&node).map(|l| Literal::new(&l));
            (node, required)
        };
        let mut program = Vec::new();
        compile(&node, &mut program)?;
        program.push(Inst::Match);
        Ok(Self {
            source: pattern.to_owned(),
            program,
            case_insensitive,
            required,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the WHOLE of `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        // Most header values a route sees do not match; a missing required literal says so for
        // the price of one substring search instead of a run of the NFA (~40 ns/char in wasm).
        if let Some(literal) = &self.required {
            if !literal.found_in(text.as_bytes()) {
                return false;
            }
        }
        self.nfa_match(text)
    }

    /// The work a full match of `text` does, without the literal prefilter: the match result,
    /// and the number of simulation steps (NFA threads advanced over a character, plus states
    /// visited while following epsilon moves), each a bounded amount of work. At most a
    /// constant times `(characters + 1) x program size`: linear in the text, whatever the
    /// pattern. For tests and benchmarks; the request path runs the same simulation uncounted.
    pub fn match_work(&self, text: &str) -> (bool, u64) {
        let mut steps = 0u64;
        let matched = self.simulate(text, &mut steps);
        (matched, steps)
    }

    /// The Pike simulation of the whole program over `text`.
    fn nfa_match(&self, text: &str) -> bool {
        self.simulate(text, &mut ())
    }

    fn simulate(&self, text: &str, tally: &mut impl Tally) -> bool {
        let n = self.program.len();
        let mut current = Threads::new(n);
        let mut next = Threads::new(n);
        let mut at_start = true;
        let mut chars = text.chars().peekable();
        add_thread(
            &self.program,
            &mut current,
            0,
            at_start,
            chars.peek().is_none(),
            tally,
        );
        while let Some(c) = chars.next() {
            let c = if self.case_insensitive {
                c.to_ascii_lowercase()
            } else {
                c
            };
            at_start = false;
            let at_end = chars.peek().is_none();
            next.clear();
            tally.add(current.len);
            for i in 0..current.len {
                let pc = current.dense.get(i).copied().unwrap_or(0);
                if let Some(Inst::Char(class)) = self.program.get(pc) {
                    if class.contains(c) {
                        add_thread(&self.program, &mut next, pc + 1, at_start, at_end, tally);
                    }
                }
            }
            std::mem::swap(&mut current, &mut next);
            if current.len == 0 {
                return false;
            }
        }
        (0..current.len).any(|i| {
            matches!(
                current.dense.get(i).and_then(|pc| self.program.get(*pc)),
                Some(Inst::Match)
            )
        })
    }
}

/// Sparse set of program counters (Briggs-Torczon): O(1) insert, clear and membership.
struct Threads {
    dense: Vec<usize>,
    sparse: Vec<usize>,
    len: usize,
}

impl Threads {
    fn new(n: usize) -> Self {
        Self {
            dense: vec![0; n],
            sparse: vec![0; n],
            len: 0,
        }
    }
    fn clear(&mut self) {
        self.len = 0;
    }
    fn insert(&mut self, pc: usize) -> bool {
        let Some(&slot) = self.sparse.get(pc) else {
            return false;
        };
        if slot < self.len && self.dense.get(slot) == Some(&pc) {
            return false;
        }
        if let (Some(d), Some(s)) = (self.dense.get_mut(self.len), self.sparse.get_mut(pc)) {
            *d = pc;
            *s = self.len;
            self.len += 1;
            true
        } else {
            false
        }
    }
}

/// Counts simulation steps for [`Regex::match_work`]. The request path passes `()`, whose
/// count compiles to nothing.
trait Tally {
    fn add(&mut self, steps: usize);
}

impl Tally for () {
    #[inline(always)]
    fn add(&mut self, _: usize) {}
}

impl Tally for u64 {
    fn add(&mut self, steps: usize) {
        *self = self.saturating_add(steps as u64);
    }
}

/// Adds `pc` and everything reachable from it by epsilon moves. Iterative: a deep pattern
/// cannot exhaust the wasm stack.
fn add_thread(
    program: &[Inst],
    set: &mut Threads,
    pc: usize,
    at_start: bool,
    at_end: bool,
    tally: &mut impl Tally,
) {
    let mut stack = vec![pc];
    while let Some(pc) = stack.pop() {
        tally.add(1);
        if !set.insert(pc) {
            continue;
        }
        match program.get(pc) {
            Some(Inst::Jmp(t)) => stack.push(*t),
            Some(Inst::Split(a, b)) => {
                stack.push(*b);
                stack.push(*a);
            }
            Some(Inst::AssertStart) if at_start => stack.push(pc + 1),
            Some(Inst::AssertEnd) if at_end => stack.push(pc + 1),
            _ => {}
        }
    }
}

/// The longest run of plain characters that every text matching `node` spells out contiguously,
/// if any: `.*CanaryTester/[0-9]+.*` gives `CanaryTester/`. Sound by construction: a run is taken
/// only from consecutive single-character nodes of a concatenation whose every part is
/// mandatory (a concatenation, or a repetition with `min >= 1`, reached only through such
/// nodes). Alternations, optional repetitions and assertions contribute nothing.
fn required_literal(node: &Node) -> Option<String> {
    let mut best = String::new();
    collect_required(node, &mut best);
    (!best.is_empty()).then_some(best)
}

fn collect_required(node: &Node, best: &mut String) {
    match node {
        Node::Class(c) => {
            if let Some(ch) = c.single() {
                keep_longer(best, ch.to_string());
            }
        }
        Node::Concat(nodes) => {
            let mut run = String::new();
            for n in nodes {
                if let Some(ch) = match n {
                    Node::Class(c) => c.single(),
                    _ => None,
                } {
                    run.push(ch);
                    continue;
                }
                keep_longer(best, std::mem::take(&mut run));
                collect_required(n, best);
            }
            keep_longer(best, run);
        }
        Node::Repeat { node, min, .. } if *min >= 1 => collect_required(node, best),
        Node::Repeat { .. } | Node::Alt(_) | Node::Empty | Node::Start | Node::End => {}
    }
}

fn keep_longer(best: &mut String, candidate: String) {
    if candidate.chars().count() > best.chars().count() {
        *best = candidate;
    }
}

fn emit(program: &mut Vec<Inst>, inst: Inst) -> Result<usize, RegexError> {
    if program.len() >= MAX_PROGRAM {
        return err(format!(
            "pattern too large: more than {MAX_PROGRAM} instructions once repetitions are expanded"
        ));
    }
    program.push(inst);
    Ok(program.len() - 1)
}

fn patch(program: &mut [Inst], at: usize, inst: Inst) {
    if let Some(slot) = program.get_mut(at) {
        *slot = inst;
    }
}

fn compile(node: &Node, program: &mut Vec<Inst>) -> Result<(), RegexError> {
    match node {
        Node::Empty => {}
        Node::Class(c) => {
            emit(program, Inst::Char(c.clone()))?;
        }
        Node::Start => {
            emit(program, Inst::AssertStart)?;
        }
        Node::End => {
            emit(program, Inst::AssertEnd)?;
        }
        Node::Concat(nodes) => {
            for n in nodes {
                compile(n, program)?;
            }
        }
        Node::Alt(branches) => {
            // split L1, next; L1: a; jmp end; next: split L2, ... ; last branch falls through.
            let mut jumps = Vec::new();
            let last = branches.len().saturating_sub(1);
            for (i, b) in branches.iter().enumerate() {
                if i < last {
                    let split = emit(program, Inst::Split(0, 0))?;
                    compile(b, program)?;
                    jumps.push(emit(program, Inst::Jmp(0))?);
                    let after = program.len();
                    patch(program, split, Inst::Split(split + 1, after));
                } else {
                    compile(b, program)?;
                }
            }
            let end = program.len();
            for j in jumps {
                patch(program, j, Inst::Jmp(end));
            }
        }
        Node::Repeat { node, min, max } => {
            for _ in 0..*min {
                compile(node, program)?;
            }
            match max {
                None => {
                    // L: split body, out; body; jmp L
                    let split = emit(program, Inst::Split(0, 0))?;
                    compile(node, program)?;
                    emit(program, Inst::Jmp(split))?;
                    let out = program.len();
                    patch(program, split, Inst::Split(split + 1, out));
                }
                Some(max) => {
                    let mut splits = Vec::new();
                    for _ in *min..*max {
                        splits.push(emit(program, Inst::Split(0, 0))?);
                        compile(node, program)?;
                    }
                    let out = program.len();
                    for s in splits {
                        patch(program, s, Inst::Split(s + 1, out));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Makes every letter match both cases (ASCII), for `(?i)`. The input is lower-cased as it is
/// read, so classes need the lower-case letters of their ranges.
fn fold_case(node: Node) -> Node {
    match node {
        Node::Class(mut c) => {
            let mut extra = Vec::new();
            for (lo, hi) in &c.ranges {
                let (lo_u, hi_u) = (
                    u32::from(*lo).max(u32::from(b'A')),
                    u32::from(*hi).min(u32::from(b'Z')),
                );
                if lo_u <= hi_u {
                    if let (Some(a), Some(b)) =
                        (char::from_u32(lo_u + 32), char::from_u32(hi_u + 32))
                    {
                        extra.push((a, b));
                    }
                }
            }
            c.ranges.extend(extra);
            Node::Class(c)
        }
        Node::Concat(v) => Node::Concat(v.into_iter().map(fold_case).collect()),
        Node::Alt(v) => Node::Alt(v.into_iter().map(fold_case).collect()),
        Node::Repeat { node, min, max } => Node::Repeat {
            node: Box::new(fold_case(*node)),
            min,
            max,
        },
        other => other,
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn parse_alt(&mut self) -> Result<Node, RegexError> {
        let mut branches = vec![self.parse_concat()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            branches.push(self.parse_concat()?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Node::Empty)
        } else {
            Node::Alt(branches)
        })
    }

    fn parse_concat(&mut self) -> Result<Node, RegexError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.parse_atom()?;
            let atom = self.parse_repeat(atom)?;
            items.push(atom);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    fn parse_atom(&mut self) -> Result<Node, RegexError> {
        let at = self.pos;
        let Some(c) = self.bump() else {
            return err("unexpected end of pattern");
        };
        match c {
            '.' => Ok(Node::Class(Class::any_but_newline())),
            '^' => Ok(Node::Start),
            '$' => Ok(Node::End),
            '[' => self.parse_class().map(Node::Class),
            '(' => self.parse_group(at),
            '\\' => self.parse_escape(false).map(Node::Class),
            '*' | '+' | '?' => err(format!(
                "repetition operator '{c}' at offset {at} has nothing to repeat"
            )),
            '{' if self.looks_like_counted(self.pos) => err(format!(
                "repetition operator '{{' at offset {at} has nothing to repeat"
            )),
            other => Ok(Node::Class(Class::one(other))),
        }
    }

    fn parse_group(&mut self, at: usize) -> Result<Node, RegexError> {
        self.depth += 1;
        if self.depth > MAX_NEST {
            return err(format!("groups nested deeper than {MAX_NEST}"));
        }
        if self.peek() == Some('?') {
            self.pos += 1;
            match self.bump() {
                Some(':') => {}
                Some('P') if self.peek() == Some('<') => {
                    self.pos += 1;
                    self.skip_group_name()?;
                }
                Some('<') if !matches!(self.peek(), Some('=') | Some('!')) => {
                    self.skip_group_name()?
                }
                Some('=') | Some('!') | Some('<') => {
                    return err("lookaround is not supported (RE2 has none)")
                }
                Some(f) => {
                    return err(format!(
                        "group flag '{f}' at offset {at} is not supported; only a leading (?i) is"
                    ))
                }
                None => return err("unexpected end of pattern in group"),
            }
        }
        let inner = self.parse_alt()?;
        if self.bump() != Some(')') {
            return err(format!("group opened at offset {at} is not closed"));
        }
        self.depth -= 1;
        Ok(inner)
    }

    fn skip_group_name(&mut self) -> Result<(), RegexError> {
        while let Some(c) = self.bump() {
            if c == '>' {
                return Ok(());
            }
            if !(c.is_ascii_alphanumeric() || c == '_') {
                return err(format!("invalid character {c:?} in group name"));
            }
        }
        err("group name is not closed with '>'")
    }

    /// Whether the text from `start` (just after a `{`) is `n}`, `n,}` or `n,m}`; otherwise the
    /// brace is a literal, as in RE2.
    fn looks_like_counted(&self, start: usize) -> bool {
        let mut i = start;
        let mut digits = 0;
        while let Some(c) = self.chars.get(i) {
            match c {
                '0'..='9' => digits += 1,
                ',' => {}
                '}' => return digits > 0,
                _ => return false,
            }
            i += 1;
        }
        false
    }

    fn parse_repeat(&mut self, atom: Node) -> Result<Node, RegexError> {
        let mut node = atom;
        let mut repeated = false;
        loop {
            let (min, max) = match self.peek() {
                Some('*') => (0, None),
                Some('+') => (1, None),
                Some('?') => (0, Some(1)),
                Some('{') if self.looks_like_counted(self.pos + 1) => {
                    self.pos += 1;
                    let min = self.parse_number()?;
                    let max = if self.peek() == Some(',') {
                        self.pos += 1;
                        if self.peek() == Some('}') {
                            None
                        } else {
                            Some(self.parse_number()?)
                        }
                    } else {
                        Some(min)
                    };
                    if self.peek() != Some('}') {
                        return err("counted repetition is not closed with '}'");
                    }
                    if let Some(max) = max {
                        if max < min {
                            return err(format!(
                                "counted repetition {{{min},{max}}} has min above max"
                            ));
                        }
                    }
                    (min, max)
                }
                _ => return Ok(node),
            };
            self.pos += 1;
            if repeated {
                return err("a repetition operator cannot follow another (write (a*)* to nest)");
            }
            if matches!(node, Node::Start | Node::End) {
                return err("an anchor cannot be repeated");
            }
            repeated = true;
            // Lazy and possessive markers do not change which strings match in full.
            if self.peek() == Some('?') {
                self.pos += 1;
            }
            node = Node::Repeat {
                node: Box::new(node),
                min,
                max,
            };
        }
    }

    fn parse_number(&mut self) -> Result<u32, RegexError> {
        let start = self.pos;
        let mut value: u32 = 0;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
            self.pos += 1;
            value = value.saturating_mul(10).saturating_add(d);
        }
        if self.pos == start {
            return err("expected a number in counted repetition");
        }
        if value > MAX_REPEAT {
            return err(format!(
                "repetition count {value} is above the limit of {MAX_REPEAT}"
            ));
        }
        Ok(value)
    }

    fn parse_class(&mut self) -> Result<Class, RegexError> {
        let mut class = Class {
            ranges: Vec::new(),
            negated: false,
        };
        if self.peek() == Some('^') {
            self.pos += 1;
            class.negated = true;
        }
        let mut first = true;
        loop {
            let Some(c) = self.bump() else {
                return err("character class is not closed with ']'");
            };
            match c {
                ']' if !first => break,
                '[' if self.peek() == Some(':') => {
                    return err("POSIX classes like [[:alpha:]] are not supported; use ranges")
                }
                '\\' => {
                    let escaped = self.parse_escape(true)?;
                    if escaped.negated {
                        return err(
                            "negated escapes (\\D \\W \\S) inside a class are not supported",
                        );
                    }
                    class.ranges.extend(escaped.ranges);
                }
                lo => {
                    if self.peek() == Some('-') && self.peek_at(1).is_some_and(|n| n != ']') {
                        self.pos += 1;
                        let hi = match self.bump() {
                            Some('\\') => {
                                let e = self.parse_escape(true)?;
                                match e.ranges.as_slice() {
                                    [(a, b)] if a == b && !e.negated => *a,
                                    _ => {
                                        return err("a class range must end in a single character")
                                    }
                                }
                            }
                            Some(h) => h,
                            None => return err("character class is not closed with ']'"),
                        };
                        if hi < lo {
                            return err(format!("class range {lo}-{hi} is reversed"));
                        }
                        class.ranges.push((lo, hi));
                    } else {
                        class.ranges.push((lo, lo));
                    }
                }
            }
            first = false;
        }
        Ok(class)
    }

    fn parse_escape(&mut self, in_class: bool) -> Result<Class, RegexError> {
        let Some(c) = self.bump() else {
            return err("pattern ends with a lone backslash");
        };
        let digits = vec![('0', '9')];
        let word = vec![('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
        // RE2: \s is [\t\n\f\r ], \w and \d are ASCII.
        let space = vec![('\t', '\n'), ('\u{c}', '\r'), (' ', ' ')];
        let class = |ranges: Vec<(char, char)>, negated: bool| Class { ranges, negated };
        Ok(match c {
            'd' => class(digits, false),
            'D' => class(digits, true),
            'w' => class(word, false),
            'W' => class(word, true),
            's' => class(space, false),
            'S' => class(space, true),
            't' => Class::one('\t'),
            'n' => Class::one('\n'),
            'r' => Class::one('\r'),
            'f' => Class::one('\u{c}'),
            'v' => Class::one('\u{b}'),
            '1'..='9' => return err("backreferences are not supported (RE2 has none)"),
            'b' | 'B' | 'A' | 'z' if !in_class => {
                return err(format!(
                    "assertion \\{c} is not supported; the whole value is matched anyway"
                ))
            }
            'p' | 'P' => return err("Unicode classes (\\p, \\P) are not supported"),
            c if c.is_ascii_punctuation() || c == ' ' => Class::one(c),
            other => return err(format!("unknown escape \\{other}")),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod required_literal_tests {
    use super::{Literal, Regex};

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_literal_search_agrees_with_str_contains() {
        // Every needle and haystack over a two-letter alphabet up to lengths 5 and 9: the
        // borders ("abab", "aab") that break a naive restart are all in there.
        let words = |max: usize| -> Vec<String> {
            let mut out = vec![String::new()];
            for len in 1..=max {
                for bits in 0..(1u32 << len) {
                    out.push(
                        (0..len)
                            .map(|i| if bits >> i & 1 == 1 { 'b' } else { 'a' })
                            .collect(),
                    );
                }
            }
            out
        };
        let hays = words(9);
        for needle in words(5) {
            let lit = Literal::new(&needle);
            for hay in &hays {
                assert_eq!(
                    lit.found_in(hay.as_bytes()),
                    hay.contains(needle.as_str()),
                    "{needle:?} in {hay:?}"
                );
            }
        }
    }

    const PATTERNS: [&str; 14] = [
        ".*CanaryTester/[0-9]+.*",
        "abc",
        "a(bc|bd)e",
        "x(abc)+y",
        "x(abc)*y",
        "x(abc)?y",
        "^qa-[a-z]+$",
        "(?:team)-(alpha|beta){1,2}",
        "[a][b]c.d",
        "ab{2}c",
        "ab{0,2}c",
        "(?i)Canary.*",
        "\\d+\\.\\d+",
        "",
    ];
    const TEXTS: [&str; 18] = [
        "",
        "Mozilla/5.0 (X11; Linux x86_64) bench/1",
        "Mozilla/5.0 CanaryTester/42 (X11)",
        "CanaryTester/",
        "abc",
        "abd",
        "abce",
        "abde",
        "xy",
        "xabcy",
        "xabcabcy",
        "qa-team",
        "team-alphabeta",
        "abc.d",
        "abbc",
        "ac",
        "canary tester",
        "3.14",
    ];

    #[test]
    fn the_literal_prefilter_never_changes_a_result() {
        for p in PATTERNS {
            let r = Regex::new(p).unwrap();
            for t in TEXTS {
                assert_eq!(r.is_match(t), r.nfa_match(t), "pattern {p:?} on {t:?}");
            }
        }
    }

    #[test]
    fn required_literals_are_the_mandatory_plain_runs() {
        let lit = |p: &str| {
            Regex::new(p)
                .unwrap()
                .required
                .map(|l| String::from_utf8(l.bytes).unwrap())
        };
        assert_eq!(
            lit(".*CanaryTester/[0-9]+.*").as_deref(),
            Some("CanaryTester/")
        );
        assert_eq!(lit("x(abc)+y").as_deref(), Some("abc"));
        assert_eq!(lit("x(abc)*y").as_deref(), Some("x"));
        assert_eq!(lit("a(bc|bd)e").as_deref(), Some("a"));
        assert_eq!(lit("[a][b]c.d").as_deref(), Some("abc"));
        assert_eq!(lit("(?i)Canary.*"), None);
        assert_eq!(lit("(a|b)"), None);
    }
}
