//! Turns a TOML or serde error, which only carries a byte span, into a located error with
//! the dotted key path of that span.
//!
//! The file is read a second time into a tree of keys and values with their spans; the
//! key path is the one of the smallest key or value containing the error span.
//!
//! `toml::Spanned<T>` cannot be used for that tree: toml has no span for implicit tables
//! (`defaults` in `[defaults.check]`) and `Spanned` then fails. The tree asks for spans
//! the way `Spanned` does, through a struct name and field names that toml recognises,
//! and accepts a plain value when toml has no span to give. Those names are taken from
//! `Spanned`'s own `Deserialize` (see [`spanned_protocol`]) rather than copied here.

use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};
use toml::Spanned;

use super::error::{LocatedError, Source};

/// The struct name and field names (start, end, value) by which a type asks toml for a span.
#[derive(Debug)]
struct SpannedProtocol {
    name: &'static str,
    fields: &'static [&'static str],
}

/// A deserializer that only records the struct name and fields it is asked for.
struct Capture;

/// The error [`Capture`] returns, carrying what it recorded.
#[derive(Debug)]
struct Captured(Option<SpannedProtocol>);

impl fmt::Display for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("capture")
    }
}

impl std::error::Error for Captured {}

impl de::Error for Captured {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Self(None)
    }
}

impl<'de> Deserializer<'de> for Capture {
    type Error = Captured;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
        Err(Captured(None))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Captured> {
        Err(Captured(Some(SpannedProtocol { name, fields })))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// How `toml::Spanned` asks for a span, captured once from its `Deserialize`.
fn spanned_protocol() -> Option<&'static SpannedProtocol> {
    static PROTOCOL: OnceLock<Option<SpannedProtocol>> = OnceLock::new();
    PROTOCOL
        .get_or_init(|| match Spanned::<()>::deserialize(Capture) {
            Err(Captured(Some(p))) if p.fields.len() == 3 => Some(p),
            _ => None,
        })
        .as_ref()
}

/// Reads the rest of a span answer (`start`, `end`, `value`) after its first key.
fn read_span_answer<'de, A, T>(
    mut map: A,
    protocol: &SpannedProtocol,
    first_key: &str,
) -> Result<(Range<usize>, T), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    let (mut start, mut end, mut value) = (None, None, None);
    let mut key = Some(first_key.to_owned());
    while let Some(k) = key {
        match protocol.fields.iter().position(|f| *f == k) {
            Some(0) => start = Some(map.next_value::<usize>()?),
            Some(1) => end = Some(map.next_value::<usize>()?),
            Some(_) => value = Some(map.next_value::<T>()?),
            None => return Err(de::Error::unknown_field(&k, protocol.fields)),
        }
        key = map.next_key::<String>()?;
    }
    match (start, end, value) {
        (Some(start), Some(end), Some(value)) => Ok((start..end, value)),
        _ => Err(de::Error::custom("incomplete span")),
    }
}

/// A key and its span, if toml has one.
struct Key {
    span: Option<Range<usize>>,
    name: String,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(Key {
                    span: None,
                    name: name.to_owned(),
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                let protocol = spanned_protocol().ok_or_else(|| de::Error::custom("no spans"))?;
                let first: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom("empty key"))?;
                let (span, name) = read_span_answer(map, protocol, &first)?;
                Ok(Key {
                    span: Some(span),
                    name,
                })
            }
        }

        match spanned_protocol() {
            Some(p) => deserializer.deserialize_struct(p.name, p.fields, KeyVisitor),
            None => deserializer.deserialize_any(KeyVisitor),
        }
    }
}

/// A value and its span, if toml has one.
struct Located {
    span: Option<Range<usize>>,
    node: Node,
}

/// A TOML value reduced to its shape.
enum Node {
    Table(Vec<(Key, Located)>),
    Array(Vec<Located>),
    Leaf,
}

/// Reads the entries of a table whose first key was already read.
fn read_table<'de, A: MapAccess<'de>>(mut map: A, first: Option<Key>) -> Result<Node, A::Error> {
    let mut entries = Vec::new();
    let mut key = first;
    while let Some(k) = key {
        entries.push((k, map.next_value::<Located>()?));
        key = map.next_key::<Key>()?;
    }
    Ok(Node::Table(entries))
}

/// Builds a [`Node`] from whatever toml gives: the value inside a span answer, or a value
/// that has no span.
struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Located>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let first = map.next_key::<Key>()?;
        read_table(map, first)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Tells a span answer from a table without a span, by its first key.
        struct LocatedVisitor;

        impl<'de> Visitor<'de> for LocatedVisitor {
            type Value = Located;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any TOML value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located, A::Error> {
                let Some(first) = map.next_key::<Key>()? else {
                    return Ok(Located {
                        span: None,
                        node: Node::Table(Vec::new()),
                    });
                };
                let protocol = spanned_protocol();
                let is_answer = first.span.is_none()
                    && protocol.is_some_and(|p| p.fields.first() == Some(&first.name.as_str()));
                match protocol.filter(|_| is_answer) {
                    Some(p) => {
                        let (span, node) = read_span_answer(map, p, &first.name)?;
                        Ok(Located {
                            span: Some(span),
                            node,
                        })
                    }
                    None => Ok(Located {
                        span: None,
                        node: read_table(map, Some(first))?,
                    }),
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Located, A::Error> {
                unspanned(NodeVisitor.visit_seq(seq))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Located, E> {
                unspanned(NodeVisitor.visit_bool(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Located, E> {
                unspanned(NodeVisitor.visit_i64(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Located, E> {
                unspanned(NodeVisitor.visit_u64(v))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Located, E> {
                unspanned(NodeVisitor.visit_f64(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Located, E> {
                unspanned(NodeVisitor.visit_str(v))
            }
        }

        fn unspanned<E>(node: Result<Node, E>) -> Result<Located, E> {
            node.map(|node| Located { span: None, node })
        }

        match spanned_protocol() {
            Some(p) => deserializer.deserialize_struct(p.name, p.fields, LocatedVisitor),
            None => deserializer.deserialize_any(LocatedVisitor),
        }
    }
}

/// A key as written in a dotted path: bare if it can be, quoted otherwise.
fn path_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        path_segment(key)
    } else {
        format!("{prefix}.{}", path_segment(key))
    }
}

/// The best match so far: the width of its span and its path.
type Best = Option<(usize, String)>;

/// Records `path` if `span` contains `target` at least as tightly as the best so far.
fn consider(best: &mut Best, span: Option<&Range<usize>>, target: &Range<usize>, path: &str) {
    let Some(span) = span else { return };
    let contains = span.start <= target.start && target.end <= span.end;
    let width = span.end - span.start;
    if contains && best.as_ref().is_none_or(|(w, _)| width <= *w) {
        *best = Some((width, path.to_owned()));
    }
}

fn search(node: &Node, prefix: &str, target: &Range<usize>, best: &mut Best) {
    match node {
        Node::Table(entries) => {
            for (key, value) in entries {
                let path = join(prefix, &key.name);
                consider(best, value.span.as_ref(), target, &path);
                search(&value.node, &path, target, best);
                // After the value, so a key wins over a value with the same span.
                consider(best, key.span.as_ref(), target, &path);
            }
        }
        Node::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{prefix}[{i}]");
                consider(best, item.span.as_ref(), target, &path);
                search(&item.node, &path, target, best);
            }
        }
        Node::Leaf => {}
    }
}

/// The dotted path of the key or value at `span`, if the document is valid TOML.
fn key_path_at(text: &str, span: &Range<usize>) -> Option<String> {
    let root: Node = toml::from_str(text).ok()?;
    let mut best = None;
    search(&root, "", span, &mut best);
    best.map(|(_, path)| path).filter(|p| !p.is_empty())
}

/// For a syntax error, where no tree can be built: the bare key at the start of the line.
fn key_on_line(line: &str) -> String {
    line.split_once('=')
        .map(|(key, _)| key.trim())
        .filter(|key| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c))
        })
        .unwrap_or_default()
        .to_owned()
}

/// The located error for a failed `toml::from_str`.
pub(crate) fn toml_error(source: &Source<'_>, error: &toml::de::Error) -> LocatedError {
    let text = source.text();
    let span = error.span().unwrap_or(0..0);
    let mut message = error.message().trim().to_owned();
    let mut key = key_path_at(text, &span).unwrap_or_else(|| {
        let (line, _) = source.position(span.start);
        key_on_line(source.line_text(line))
    });
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        key = join(&key, field);
        message = "missing key".to_owned();
    }
    // TOML date-times reach serde as maps; say what the user actually wrote.
    let written = text.get(span.clone()).unwrap_or("");
    if message.starts_with("invalid type: map") && !written.starts_with(['{', '[']) {
        message = message.replacen("map", "date-time", 1);
    }
    source.error(&span, key, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The path at the first `needle` in `text`.
    fn path_of(text: &str, needle: &str) -> Option<String> {
        let start = text.find(needle).unwrap();
        key_path_at(text, &(start..start + needle.len()))
    }

    #[test]
    fn finds_paths_through_implicit_tables_and_arrays() {
        let text = "a = 1\n[defaults.check]\nrise = 2\n[[service]]\nname = \"x\"\n[[service]]\nname = \"y\"\n[[service.backend]]\ncheck = { port = 7 }\ncommand = [\"p\", 5]\n";
        assert!(spanned_protocol().is_some());
        assert_eq!(
            path_of(text, "rise").as_deref(),
            Some("defaults.check.rise")
        );
        assert_eq!(path_of(text, "\"y\"").as_deref(), Some("service[1].name"));
        assert_eq!(
            path_of(text, "port").as_deref(),
            Some("service[1].backend[0].check.port")
        );
        assert_eq!(
            path_of(text, "5]").as_deref(),
            Some("service[1].backend[0].command")
        );
        let item = text.find("5]").unwrap();
        assert_eq!(
            key_path_at(text, &(item..item + 1)).as_deref(),
            Some("service[1].backend[0].command[1]")
        );
        let dotted = "tunnel.source_v4 = \"x\"\n";
        assert_eq!(
            path_of(dotted, "\"x\"").as_deref(),
            Some("tunnel.source_v4")
        );
        let date = "when = 1979-05-27\n";
        assert_eq!(path_of(date, "1979").as_deref(), Some("when"));
    }
}
