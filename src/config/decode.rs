//! Typed reading of a [`Node`] tree that collects every error instead of stopping.
//!
//! Owns: the "field at path P, line L, is wrong because M" vocabulary.
//! Never: knows abgate's schema; `schema` drives these helpers.

use std::fmt;
use std::time::Duration;

use super::yaml::{Entry, Node, Value};

/// One problem found in a config, located by YAML path and line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// Dotted path with indices, e.g. `experiments[0].arms[1].weight`.
    pub path: String,
    /// 1-based line in the source text, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        match self.line {
            Some(line) => write!(f, "{path}: {} (line {line})", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in one config, in document order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Joins a child key onto a path.
pub fn field(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a sequence index onto a path.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Accumulates errors while decoding.
#[derive(Default)]
pub struct Decoder {
    errors: Vec<ConfigError>,
    /// Read `${file:...}` / `${env:...}` references in backend headers (a
    /// config about to be served); off for texts only looked at (history).
    pub resolve_secrets: bool,
}

/// A mapping whose keys were checked against the schema's known fields.
pub struct Fields<'a> {
    pub path: String,
    pub line: usize,
    entries: &'a [Entry],
}

impl<'a> Fields<'a> {
    /// The node for `key`, if present and not null.
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
            .filter(|n| n.value != Value::Null)
    }

    /// Path of a child field.
    pub fn path_of(&self, key: &str) -> String {
        field(&self.path, key)
    }

    /// All entries, for maps whose keys are names (e.g. `backends`).
    pub fn entries(&self) -> &'a [Entry] {
        self.entries
    }
}

impl Decoder {
    pub fn error(&mut self, path: impl Into<String>, line: usize, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            line: Some(line),
            message: message.into(),
        });
    }

    pub fn finish(mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            // Document order reads best; ties keep discovery order.
            self.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(ConfigErrors(self.errors))
        }
    }

    /// Reads a mapping, reporting unknown and duplicate keys.
    pub fn fields<'a>(&mut self, node: &'a Node, path: &str, known: &[&str]) -> Option<Fields<'a>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                path,
                node.line,
                format!("expected a mapping, got {}", kind(node)),
            );
            return None;
        };
        for (i, e) in entries.iter().enumerate() {
            if !known.is_empty() && !known.contains(&e.key.as_str()) {
                self.error(
                    field(path, &e.key),
                    e.key_line,
                    format!("unknown field; expected one of: {}", known.join(", ")),
                );
            }
            if entries[..i].iter().any(|prev| prev.key == e.key) {
                self.error(field(path, &e.key), e.key_line, "duplicate key");
            }
        }
        Some(Fields {
            path: path.to_string(),
            line: node.line,
            entries,
        })
    }

    /// Reads a sequence's items.
    pub fn seq<'a>(&mut self, node: &'a Node, path: &str) -> Option<&'a [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.error(
                    path,
                    node.line,
                    format!("expected a list, got {}", kind(node)),
                );
                None
            }
        }
    }

    /// Reads a string (quoted or plain).
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(s) => Some(s.text.clone()),
            _ => {
                self.error(
                    path,
                    node.line,
                    format!("expected a string, got {}", kind(node)),
                );
                None
            }
        }
    }

    /// Reads a non-empty string.
    pub fn name(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(path, node.line, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar(s) if s.plain && s.text == "true" => Some(true),
            Value::Scalar(s) if s.plain && s.text == "false" => Some(false),
            _ => {
                self.error(path, node.line, "expected true or false");
                None
            }
        }
    }

    /// Reads a finite number written plain (not quoted).
    pub fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match &node.value {
            Value::Scalar(s) if s.plain => match s.text.parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                _ => {
                    self.error(
                        path,
                        node.line,
                        format!("expected a number, got {:?}", s.text),
                    );
                    None
                }
            },
            _ => {
                self.error(
                    path,
                    node.line,
                    format!("expected a number, got {}", kind(node)),
                );
                None
            }
        }
    }

    /// Reads a whole number in `min..=max`.
    pub fn integer(&mut self, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.number(node, path)?;
        if v.fract() != 0.0 || v < min as f64 || v > max as f64 {
            self.error(
                path,
                node.line,
                format!("must be a whole number in {min}..={max}, got {v}"),
            );
            return None;
        }
        Some(v as u64)
    }

    /// Reads a byte size or count: a plain integer, or a string with a binary unit
    /// such as `64KiB`, `16MiB`, `1GiB`.
    pub fn size(&mut self, node: &Node, path: &str) -> Option<u64> {
        let text = self.string(node, path)?;
        match parse_size(&text) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.error(path, node.line, msg);
                None
            }
        }
    }

    /// Reads a duration such as `250ms`, `30s`, `5m`, `24h`, `7d`.
    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.string(node, path)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(msg) => {
                self.error(path, node.line, msg);
                None
            }
        }
    }
}

fn kind(node: &Node) -> &'static str {
    match node.value {
        Value::Null => "nothing",
        Value::Scalar(_) => "a scalar",
        Value::Seq(_) => "a list",
        Value::Map(_) => "a mapping",
    }
}

/// Parses a whole number with an optional binary unit (`KiB`, `MiB`, `GiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("{t:?} is not a whole number, e.g. 65536 or \"64KiB\""))?;
    let scale: u64 = match unit.trim() {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{t:?} has unknown unit {other:?}; use KiB, MiB or GiB"
            ))
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{t:?} is out of range"))
}

/// Parses `<number><unit>` with unit one of ms, s, m, h, d. A bare `0` is allowed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {t:?} needs a unit (ms, s, m, h, d), e.g. \"30s\""))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("duration {t:?} must start with a number, e.g. \"30s\""))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "duration {t:?} has unknown unit {unit:?}; use ms, s, m, h or d"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration {t:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("30").unwrap_err().contains("unit"));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("10MB").unwrap_err().contains("unknown unit"));
    }
}
