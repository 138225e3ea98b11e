//! Route filters (`where = "body.district == '南海' and body.capital != null"`): a small closed
//! expression language, parsed once at config load and evaluated per document.
//!
//! ```text
//! expr  := and ("or" and)*
//! and   := unary ("and" unary)*
//! unary := "not" unary | "(" expr ")" | test
//! test  := field ("==" | "!=") literal | field "in" "[" literal ("," literal)* "]"
//!        | field "is" ["not"] "null"
//! field := "body." name ("." name)*
//! literal := 'text' | integer | true | false
//! ```
//! Literals compare with a value's text form, so `body.capital == '1200000.00'` matches a
//! decimal and `body.registered_at == '2019-03-01'` a date. An absent field is null.

use std::collections::BTreeMap;

use exhub_schemas::Value;

/// A parsed filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Both hold.
    And(Box<Filter>, Box<Filter>),
    /// Either holds.
    Or(Box<Filter>, Box<Filter>),
    /// Does not hold.
    Not(Box<Filter>),
    /// The field equals one of the literals.
    In(Vec<String>, Vec<Literal>),
    /// The field is null or absent.
    IsNull(Vec<String>),
}

/// A literal in a filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Literal {
    /// `'text'`
    Text(String),
    /// `42`
    Int(i64),
    /// `true` / `false`
    Bool(bool),
}

/// A filter that does not parse: what and where (character offset).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("filter does not parse at character {at}: {message}")]
pub struct FilterError {
    /// 0-based character offset.
    pub at: usize,
    /// What was expected.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    Int(i64),
    Sym(&'static str),
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, FilterError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(FilterError {
                            at: start,
                            message: "unterminated string".into(),
                        });
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push((start, Tok::Str(s)));
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            i += 1;
            while chars.get(i).is_some_and(char::is_ascii_digit) {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text.parse().map_err(|_| FilterError {
                at: start,
                message: format!("integer {text} out of range"),
            })?;
            out.push((start, Tok::Int(n)));
        } else if c.is_ascii_alphabetic() || c == '_' {
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            {
                i += 1;
            }
            out.push((start, Tok::Word(chars[start..i].iter().collect())));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = match (two.as_str(), c) {
                ("==", _) => "==",
                ("!=", _) => "!=",
                (_, '(') => "(",
                (_, ')') => ")",
                (_, '[') => "[",
                (_, ']') => "]",
                (_, ',') => ",",
                _ => {
                    return Err(FilterError {
                        at: i,
                        message: format!("unexpected character {c:?}"),
                    });
                }
            };
            i += sym.len();
            out.push((start, Tok::Sym(sym)));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }
    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(a, _)| *a)
    }
    fn err<T>(&self, message: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            at: self.at(),
            message: message.into(),
        })
    }
    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(x)) if x == w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expr(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while self.eat_word("or") {
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.unary()?;
        while self.eat_word("and") {
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Filter, FilterError> {
        if self.eat_word("not") {
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.eat_sym("(") {
            let e = self.expr()?;
            if !self.eat_sym(")") {
                return self.err("expected )");
            }
            return Ok(e);
        }
        self.test()
    }
    fn literal(&mut self) -> Result<Literal, FilterError> {
        let lit = match self.peek() {
            Some(Tok::Str(s)) => Literal::Text(s.clone()),
            Some(Tok::Int(n)) => Literal::Int(*n),
            Some(Tok::Word(w)) if w == "true" => Literal::Bool(true),
            Some(Tok::Word(w)) if w == "false" => Literal::Bool(false),
            _ => return self.err("expected a literal ('text', an integer, true or false)"),
        };
        self.pos += 1;
        Ok(lit)
    }
    fn test(&mut self) -> Result<Filter, FilterError> {
        let field = match self.peek() {
            Some(Tok::Word(w)) if w.starts_with("body.") && w.len() > 5 => {
                w[5..].split('.').map(str::to_owned).collect::<Vec<_>>()
            }
            _ => return self.err("expected a field such as body.district"),
        };
        if field.iter().any(String::is_empty) {
            return self.err("empty field name");
        }
        self.pos += 1;
        if self.eat_sym("==") {
            if self.eat_word("null") {
                return Ok(Filter::IsNull(field));
            }
            return Ok(Filter::In(field, vec![self.literal()?]));
        }
        if self.eat_sym("!=") {
            if self.eat_word("null") {
                return Ok(Filter::Not(Box::new(Filter::IsNull(field))));
            }
            return Ok(Filter::Not(Box::new(Filter::In(field, vec![self.literal()?]))));
        }
        if self.eat_word("in") {
            if !self.eat_sym("[") {
                return self.err("expected [");
            }
            let mut lits = vec![self.literal()?];
            while self.eat_sym(",") {
                lits.push(self.literal()?);
            }
            if !self.eat_sym("]") {
                return self.err("expected ]");
            }
            return Ok(Filter::In(field, lits));
        }
        if self.eat_word("is") {
            let negated = self.eat_word("not");
            if !self.eat_word("null") {
                return self.err("expected null");
            }
            let t = Filter::IsNull(field);
            return Ok(if negated { Filter::Not(Box::new(t)) } else { t });
        }
        self.err("expected ==, !=, in or is")
    }
}

impl Filter {
    /// Parses a filter expression.
    pub fn parse(src: &str) -> Result<Filter, FilterError> {
        let toks = lex(src)?;
        let mut p = Parser {
            toks,
            pos: 0,
            end: src.chars().count(),
        };
        let f = p.expr()?;
        if p.peek().is_some() {
            return p.err("unexpected text after the expression");
        }
        Ok(f)
    }

    /// Every field path the filter reads.
    pub fn fields(&self) -> Vec<&[String]> {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                let mut v = a.fields();
                v.extend(b.fields());
                v
            }
            Filter::Not(a) => a.fields(),
            Filter::In(f, _) | Filter::IsNull(f) => vec![f.as_slice()],
        }
    }

    /// Whether a document body passes the filter.
    pub fn matches(&self, body: &BTreeMap<String, Value>) -> bool {
        match self {
            Filter::And(a, b) => a.matches(body) && b.matches(body),
            Filter::Or(a, b) => a.matches(body) || b.matches(body),
            Filter::Not(a) => !a.matches(body),
            Filter::IsNull(f) => matches!(lookup(body, f), None | Some(Value::Null)),
            Filter::In(f, lits) => lookup(body, f).is_some_and(|v| lits.iter().any(|l| literal_eq(l, v))),
        }
    }
}

fn lookup<'a>(body: &'a BTreeMap<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = body.get(first)?;
    for name in rest {
        match v {
            Value::Map(m) => v = m.get(name)?,
            _ => return None,
        }
    }
    Some(v)
}

fn literal_eq(lit: &Literal, v: &Value) -> bool {
    match (lit, v) {
        (Literal::Bool(b), Value::Bool(x)) => b == x,
        (Literal::Int(n), Value::Int(x)) => n == x,
        (Literal::Int(n), Value::Decimal(d)) => d.as_str() == n.to_string(),
        (Literal::Text(s), v) => {
            !matches!(v, Value::Bool(_) | Value::Int(_)) && v.scalar_text().as_deref() == Some(s.as_str())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("district".to_owned(), Value::Text("南海".into())),
            (
                "capital".to_owned(),
                Value::Decimal(exhub_schemas::Decimal::parse("1200000.00").unwrap()),
            ),
            ("n".to_owned(), Value::Int(3)),
            ("phone".to_owned(), Value::Null),
        ])
    }

    #[test]
    fn evaluates() {
        let cases = [
            ("body.district == '南海'", true),
            ("body.district != '南海'", false),
            ("body.district in ['顺德', '南海']", true),
            ("body.capital == '1200000.00' and body.n == 3", true),
            ("body.n == 4 or not (body.phone is not null)", true),
            ("body.phone is null and body.missing == null", true),
            ("body.missing == 'x'", false),
            ("body.n == '3'", false),
        ];
        for (src, expected) in cases {
            assert_eq!(Filter::parse(src).unwrap().matches(&body()), expected, "{src}");
        }
    }

    #[test]
    fn errors_say_where() {
        let e = Filter::parse("body.district = '南海'").unwrap_err();
        assert_eq!(e.at, 14);
        assert!(
            Filter::parse("district == 'x'")
                .unwrap_err()
                .message
                .contains("body.district")
        );
        assert!(
            Filter::parse("body.a == 'x")
                .unwrap_err()
                .message
                .contains("unterminated")
        );
        assert!(Filter::parse("body.a == 'x' body.b").is_err());
    }
}
