//! Calico's selector language: parse, evaluate, print.
//!
//! Grammar and semantics follow projectcalico/calico `libcalico-go/lib/selector/parser`:
//! `all()`, `global()`, `has(k)`, `k == "v"`, `k != "v"` (also true when `k` is absent),
//! `k in {..}`, `k not in {..}` (also true when absent), `k contains "s"`,
//! `k starts with "s"`, `k ends with "s"`, `!`, `&&` (binds tighter than `||`), parentheses.
//! Strings take single or double quotes. Kubernetes label selectors are translated into
//! the same tree so one evaluator serves both policy kinds.

use std::collections::BTreeMap;
use std::fmt;

/// Labels of an endpoint, a namespace or a network set.
pub type Labels = BTreeMap<String, String>;

/// A parsed selector. `And`/`Or` are kept flat so printing and re-parsing is stable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    All,
    Global,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Vec<Selector>),
    Or(Vec<Selector>),
}

/// Why a selector string was rejected, with the byte offset where parsing stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?} at byte {offset}: {message}")]
pub struct SelectorError {
    pub input: String,
    pub offset: usize,
    pub message: String,
}

impl Selector {
    /// Parse Calico selector syntax. An empty or blank string means `all()`.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { src: input, pos: 0 };
        p.skip_ws();
        if p.at_end() {
            return Ok(Selector::All);
        }
        let sel = p.parse_or(0)?;
        p.skip_ws();
        if !p.at_end() {
            return Err(p.error("unexpected text after the end of the expression"));
        }
        Ok(sel)
    }

    /// True when the labels satisfy the selector. `global` says whether the entity is a
    /// non-namespaced one (a GlobalNetworkSet), which is what `global()` tests.
    pub fn matches_entity(&self, labels: &Labels, global: bool) -> bool {
        match self {
            Selector::All => true,
            Selector::Global => global,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => labels.get(k).is_some_and(|x| x == v),
            Selector::Ne(k, v) => labels.get(k).is_none_or(|x| x != v),
            Selector::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            Selector::NotIn(k, vs) => labels.get(k).is_none_or(|x| !vs.contains(x)),
            Selector::Contains(k, s) => labels.get(k).is_some_and(|x| x.contains(s.as_str())),
            Selector::StartsWith(k, s) => labels.get(k).is_some_and(|x| x.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => labels.get(k).is_some_and(|x| x.ends_with(s.as_str())),
            Selector::Not(inner) => !inner.matches_entity(labels, global),
            Selector::And(xs) => xs.iter().all(|x| x.matches_entity(labels, global)),
            Selector::Or(xs) => xs.iter().any(|x| x.matches_entity(labels, global)),
        }
    }

    /// Match a namespaced entity (a pod's endpoint, a namespace).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_entity(labels, false)
    }

    /// Conjunction that keeps the tree flat.
    pub fn and(parts: Vec<Selector>) -> Selector {
        let mut flat = Vec::new();
        for p in parts {
            match p {
                Selector::All => {}
                Selector::And(xs) => flat.extend(xs),
                other => flat.push(other),
            }
        }
        match flat.len() {
            0 => Selector::All,
            1 => flat.remove(0),
            _ => Selector::And(flat),
        }
    }
}

fn quote(s: &str) -> String {
    // Calico strings have no escapes: pick the quote the value does not contain.
    if s.contains('"') {
        format!("'{s}'")
    } else {
        format!("\"{s}\"")
    }
}

fn quote_set(vs: &[String]) -> String {
    vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Global => write!(f, "global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, vs) => write!(f, "{k} in {{{}}}", quote_set(vs)),
            Selector::NotIn(k, vs) => write!(f, "{k} not in {{{}}}", quote_set(vs)),
            Selector::Contains(k, s) => write!(f, "{k} contains {}", quote(s)),
            Selector::StartsWith(k, s) => write!(f, "{k} starts with {}", quote(s)),
            Selector::EndsWith(k, s) => write!(f, "{k} ends with {}", quote(s)),
            Selector::Not(inner) => match inner.as_ref() {
                Selector::And(_) | Selector::Or(_) => write!(f, "!({inner})"),
                _ => write!(f, "!{inner}"),
            },
            Selector::And(xs) => {
                let parts: Vec<String> = xs
                    .iter()
                    .map(|x| match x {
                        Selector::Or(_) | Selector::And(_) => format!("({x})"),
                        _ => x.to_string(),
                    })
                    .collect();
                write!(f, "{}", parts.join(" && "))
            }
            Selector::Or(xs) => {
                let parts: Vec<String> = xs
                    .iter()
                    .map(|x| match x {
                        Selector::Or(_) => format!("({x})"),
                        _ => x.to_string(),
                    })
                    .collect();
                write!(f, "{}", parts.join(" || "))
            }
        }
    }
}

/// Nesting limit so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> SelectorError {
        SelectorError {
            input: self.src.to_string(),
            offset: self.pos,
            message: message.to_string(),
        }
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// Eat a keyword only when it is not the prefix of a longer identifier.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        if rest.starts_with(word) && !rest[word.len()..].starts_with(is_ident_char) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn parse_or(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.parse_and(depth)?];
        while self.eat("||") {
            parts.push(self.parse_and(depth)?);
        }
        Ok(flatten(parts, false))
    }

    fn parse_and(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.parse_unary(depth)?];
        while self.eat("&&") {
            parts.push(self.parse_unary(depth)?);
        }
        Ok(flatten(parts, true))
    }

    fn parse_unary(&mut self, depth: usize) -> Result<Selector, SelectorError> {
        if depth > MAX_DEPTH {
            return Err(self.error("selector nests too deeply"));
        }
        self.skip_ws();
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            self.pos += 1;
            let inner = self.parse_unary(depth + 1)?;
            return Ok(Selector::Not(Box::new(inner)));
        }
        if self.eat("(") {
            let inner = self.parse_or(depth + 1)?;
            if !self.eat(")") {
                return Err(self.error("expected `)`"));
            }
            return Ok(inner);
        }
        if self.eat_word("all") {
            return self.empty_call(Selector::All);
        }
        if self.eat_word("global") {
            return self.empty_call(Selector::Global);
        }
        if self.eat_word("has") {
            if !self.eat("(") {
                return Err(self.error("expected `(` after has"));
            }
            let key = self.label_key()?;
            if !self.eat(")") {
                return Err(self.error("expected `)` after the label key in has()"));
            }
            return Ok(Selector::Has(key));
        }
        let key = self.label_key()?;
        if self.eat("==") {
            return Ok(Selector::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(key, self.string()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.string_set()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("expected `in` after `not`"));
            }
            return Ok(Selector::NotIn(key, self.string_set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.string()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                return Err(self.error("expected `with` after `starts`"));
            }
            return Ok(Selector::StartsWith(key, self.string()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                return Err(self.error("expected `with` after `ends`"));
            }
            return Ok(Selector::EndsWith(key, self.string()?));
        }
        Err(self.error(
            "expected an operator after the label key (==, !=, in, not in, contains, starts with, ends with)",
        ))
    }

    fn empty_call(&mut self, sel: Selector) -> Result<Selector, SelectorError> {
        if self.eat("(") && self.eat(")") {
            Ok(sel)
        } else {
            Err(self.error("expected `()`"))
        }
    }

    fn label_key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let len: usize = self
            .rest()
            .chars()
            .take_while(|c| is_ident_char(*c))
            .map(char::len_utf8)
            .sum();
        if len == 0 {
            return Err(self.error("expected a label key"));
        }
        let key = self.rest()[..len].to_string();
        self.pos += len;
        Ok(key)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.error("expected a quoted string")),
        };
        self.pos += 1;
        match self.rest().find(quote) {
            Some(end) => {
                let value = self.rest()[..end].to_string();
                self.pos += end + 1;
                Ok(value)
            }
            None => Err(self.error("unterminated string")),
        }
    }

    fn string_set(&mut self) -> Result<Vec<String>, SelectorError> {
        if !self.eat("{") {
            return Err(self.error("expected `{` to start a set"));
        }
        let mut values = Vec::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.push(self.string()?);
            if self.eat("}") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.error("expected `,` or `}` in a set"));
            }
        }
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

fn flatten(parts: Vec<Selector>, conj: bool) -> Selector {
    let mut flat = Vec::new();
    for p in parts {
        match (conj, p) {
            (true, Selector::And(xs)) | (false, Selector::Or(xs)) => flat.extend(xs),
            (_, other) => flat.push(other),
        }
    }
    if flat.len() == 1 {
        flat.remove(0)
    } else if conj {
        Selector::And(flat)
    } else {
        Selector::Or(flat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operators_follow_calico_semantics() {
        let l = labels(&[("app", "web"), ("tier", "frontend")]);
        let yes = [
            "all()",
            "",
            "app == 'web'",
            "app == \"web\"",
            "missing != 'x'",
            "app != 'db'",
            "app in {'web', 'db'}",
            "missing not in {'a'}",
            "app not in {}",
            "has(tier)",
            "!has(missing)",
            "tier contains 'ont'",
            "tier starts with 'fr'",
            "tier ends with 'end'",
            "app == 'x' || tier == 'frontend'",
            "(app == 'web' || app == 'x') && has(tier)",
        ];
        for s in yes {
            assert!(Selector::parse(s).unwrap().matches(&l), "{s} should match");
        }
        let no = [
            "app == 'db'",
            "missing == ''",
            "has(missing)",
            "app in {}",
            "global()",
            "!all()",
        ];
        for s in no {
            assert!(
                !Selector::parse(s).unwrap().matches(&l),
                "{s} should not match"
            );
        }
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let sel = Selector::parse("a == '1' || b == '1' && c == '1'").unwrap();
        assert!(sel.matches(&labels(&[("a", "1")])));
        assert!(!sel.matches(&labels(&[("b", "1")])));
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for s in [
            "app ==",
            "app = 'x'",
            "has(app",
            "(a == 'b'",
            "a in {'x'",
            "a == 'x",
            "&&",
            "a == 'x' b",
        ] {
            assert!(Selector::parse(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn printing_round_trips() {
        let s = "!(a == 'x' || b != \"y\") && c not in {'1', '2'} && has(d)";
        let parsed = Selector::parse(s).unwrap();
        assert_eq!(Selector::parse(&parsed.to_string()).unwrap(), parsed);
    }
}
