//! A small YAML document tree that remembers the line of every node.
//!
//! Owns: turning YAML (or JSON, which YAML parses) text into a [`Node`] tree.
//! Never: interprets what the nodes mean; that is `decode`'s job.
//!
//! Why not deserialize straight into structs with serde: a serde deserializer stops
//! at the first error and forgets positions, while experimenters need *every*
//! mistake at once, each with its line.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML node with the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

/// The shape of a node. Scalars keep their text; `decode` interprets them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A scalar's text and whether it was written plain (unquoted): only plain
/// scalars may be read as numbers, booleans or null, as in YAML 1.2's core schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub plain: bool,
}

/// One `key: value` pair of a mapping, in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_line: usize,
    pub value: Node,
}

/// A syntax error: the document is not YAML at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "YAML syntax error at line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Parses the first document of `source`. An empty document yields `Null`.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(source);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node {
        line: 1,
        value: Value::Null,
    }))
}

enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        entries: Vec<Entry>,
        pending_key: Option<(String, usize)>,
    },
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<SyntaxError>,
}

impl TreeBuilder {
    fn fail(&mut self, line: usize, column: usize, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                line,
                column,
                message: message.into(),
            });
        }
    }

    /// Places a finished node into its parent (or makes it the root).
    fn complete(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let line = node.line;
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                Some((key, key_line)) => {
                    // A block collection starts on the line after its key; errors
                    // about the whole collection read better at the key's line.
                    let mut value = node;
                    if matches!(value.value, Value::Seq(_) | Value::Map(_)) {
                        value.line = value.line.min(key_line);
                    }
                    entries.push(Entry {
                        key,
                        key_line,
                        value,
                    })
                }
                None => match node.value {
                    Value::Scalar(s) => *pending_key = Some((s.text, line)),
                    Value::Null => *pending_key = Some((String::new(), line)),
                    _ => self.fail(line, 1, "mapping keys must be plain scalars"),
                },
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, TScalarStyle::Plain);
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar(Scalar { text, plain })
                };
                self.complete(Node { line, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                line,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                line,
                anchor,
                entries: Vec::new(),
                pending_key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    line,
                    anchor,
                    items,
                }) => self.complete(
                    Node {
                        line,
                        value: Value::Seq(items),
                    },
                    anchor,
                ),
                Some(Frame::Map {
                    line,
                    anchor,
                    entries,
                    ..
                }) => self.complete(
                    Node {
                        line,
                        value: Value::Map(entries),
                    },
                    anchor,
                ),
                None => self.fail(line, mark.col() + 1, "unbalanced collection end"),
            },
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    node.line = line;
                    self.complete(node, 0);
                }
                None => self.fail(line, mark.col() + 1, "alias to an unknown anchor"),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Converts a tree to JSON: plain scalars become numbers, booleans or null where
/// they read as such (YAML 1.2 core schema), everything else a string.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Scalar(s) if s.plain => match s.text.as_str() {
            "true" => J::Bool(true),
            "false" => J::Bool(false),
            t => t
                .parse::<i64>()
                .map(J::from)
                .ok()
                .or_else(|| {
                    t.parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(J::Number)
                })
                .unwrap_or_else(|| J::String(t.to_string())),
        },
        Value::Scalar(s) => J::String(s.text.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|e| (e.key.clone(), to_json(&e.value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_json() {
        let node = parse("a: 1\nb: [x, \"2\", 2.5, true, ~]\n").unwrap();
        assert_eq!(
            to_json(&node),
            serde_json::json!({"a": 1, "b": ["x", "2", 2.5, true, null]})
        );
    }

    #[test]
    fn lines_are_recorded_for_nested_nodes() {
        let node = parse("a: 1\nb:\n  - x: 2\n    y: \"3\"\n").unwrap();
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].key, "a");
        assert_eq!(entries[0].key_line, 1);
        let Value::Seq(items) = &entries[1].value.value else {
            panic!("not a seq")
        };
        let Value::Map(inner) = &items[0].value else {
            panic!("not a map")
        };
        assert_eq!(inner[1].key_line, 4);
        assert_eq!(
            inner[1].value.value,
            Value::Scalar(Scalar {
                text: "3".into(),
                plain: false
            })
        );
    }

    #[test]
    fn json_is_accepted() {
        let node = parse(r#"{"a": [1, 2], "b": null}"#).unwrap();
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].value.value, Value::Null);
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err}");
    }

    #[test]
    fn anchors_and_aliases_resolve() {
        let node = parse("base: &b {x: 1}\nother: *b\n").unwrap();
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        assert_eq!(entries[1].value.line, 2);
        assert!(matches!(entries[1].value.value, Value::Map(_)));
    }
}
