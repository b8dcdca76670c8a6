//! Reading the YAML text of a pipeline file into a `serde_yaml::Value` plus a position index
//! (`stages[2].needs[0]` → line 14, column 12), with yaml-rust2's event parser.
//!
//! This module owns the defences against hostile YAML: it never expands an alias beyond
//! [`MAX_NODES`] values, refuses nesting deeper than [`MAX_NESTING_DEPTH`], accepts exactly one
//! document, and reports duplicate keys (keeping the first). The parser is driven one event at a
//! time from a loop here, so no input can make it recurse. Every plain scalar except the YAML nulls
//! is kept as the *string* the user wrote (`1.10` stays `1.10`, `on` stays `on`): every leaf of a
//! pipeline is text. It must not interpret what the keys mean; that is `raw` and `validate`.

use std::collections::HashMap;
use std::fmt;

use serde_yaml::{Mapping, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

/// Mappings and sequences nested deeper than this are refused. A pipeline needs five levels
/// (file → `stages` → stage → `env` → value); the margin is for flow-style lists in scripts.
pub(super) const MAX_NESTING_DEPTH: usize = 16;

/// The most YAML values (scalars, mappings, sequences) a file may hold once its aliases are
/// expanded. A large real pipeline has a few hundred; an alias bomb has billions.
pub(super) const MAX_NODES: usize = 20_000;

/// One step of a path into the document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
}

/// A path into the document, shown as `stages[2].needs[0]` or `hosts.web.setup`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct KeyPath(pub(super) Vec<Segment>);

impl KeyPath {
    pub(super) fn root() -> KeyPath {
        KeyPath(Vec::new())
    }

    /// This path extended by the mapping key `key`.
    pub(super) fn key(&self, key: &str) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    /// This path extended by the sequence index `index`.
    pub(super) fn index(&self, index: usize) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    /// This path followed by every segment of `tail`.
    pub(super) fn join(&self, tail: &KeyPath) -> KeyPath {
        let mut path = self.clone();
        path.0.extend(tail.0.iter().cloned());
        path
    }

    /// The last mapping key of the path, if it ends in one.
    pub(super) fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(key)) => Some(key),
            _ => None,
        }
    }

    pub(super) fn parent(&self) -> KeyPath {
        let mut path = self.clone();
        path.0.pop();
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("the top level");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub(super) line: usize,
    pub(super) column: usize,
}

impl Pos {
    /// The start of the file, where problems of the whole file are reported.
    pub(super) const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(marker: &Marker) -> Pos {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos { line: marker.line().max(1), column: marker.col() + 1 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Located {
    /// Where the mapping key is, for mapping entries.
    key: Option<Pos>,
    /// Where the value starts.
    value: Pos,
}

/// Where each value of the document (and each mapping key) was written.
#[derive(Debug, Default)]
pub(super) struct Positions(HashMap<KeyPath, Located>);

impl Positions {
    /// Where the value at `path` starts. A path that was not written as such (it lies inside an
    /// alias, or it is absent) is reported at its nearest written ancestor.
    pub(super) fn value(&self, path: &KeyPath) -> Pos {
        let mut path = path.clone();
        loop {
            if let Some(located) = self.0.get(&path) {
                return located.value;
            }
            if path.0.pop().is_none() {
                return Pos::START;
            }
        }
    }

    /// Where the key of the mapping entry at `path` is (its value's position for a sequence item).
    pub(super) fn key(&self, path: &KeyPath) -> Pos {
        match self.0.get(path) {
            Some(located) => located.key.unwrap_or(located.value),
            None => self.value(path),
        }
    }
}

/// A problem found while reading the YAML itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    pub(super) pos: Pos,
    pub(super) message: String,
    pub(super) hint: Option<String>,
}

/// A document that could be read. `problems` are those that did not stop the reading (duplicate
/// keys); the value then holds the first of each duplicated key.
#[derive(Debug)]
pub(super) struct Document {
    pub(super) value: Value,
    pub(super) positions: Positions,
    pub(super) problems: Vec<Problem>,
}

/// Read `text` as one YAML document. An empty file reads as `Value::Null`. The error is a
/// problem that stops the reading: a syntax error, too deep a nesting, too many values.
pub(super) fn read(text: &str) -> Result<Document, Problem> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    let mut documents = 0;
    loop {
        let (event, marker) = parser.next_token().map_err(|error| syntax_problem(&error))?;
        let pos = Pos::from_marker(&marker);
        match event {
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(Problem {
                        pos,
                        message: "the file holds more than one YAML document".to_owned(),
                        hint: Some(
                            "a pipeline is a single document: remove the second `---` and what follows it".to_owned(),
                        ),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                builder.refuse_tag(tag.as_ref(), pos);
                builder.scalar(text, style, anchor, pos)?;
            }
            Event::SequenceStart(anchor, tag) => {
                builder.refuse_tag(tag.as_ref(), pos);
                builder.start(Container::Sequence(Vec::new()), anchor, pos)?;
            }
            Event::MappingStart(anchor, tag) => {
                builder.refuse_tag(tag.as_ref(), pos);
                builder.start(Container::mapping(), anchor, pos)?;
            }
            Event::SequenceEnd | Event::MappingEnd => builder.end(),
            Event::Alias(anchor) => builder.alias(anchor, pos)?,
        }
    }
    Ok(Document {
        value: builder.root.unwrap_or(Value::Null),
        positions: builder.positions,
        problems: builder.problems,
    })
}

fn syntax_problem(error: &ScanError) -> Problem {
    let pos = Pos::from_marker(error.marker());
    // The scanner reads flow collections (`[[[…`) ahead of the events and has its own limit of 255
    // levels, which a deep enough file reaches before `MAX_NESTING_DEPTH` is checked.
    if error.info() == SCANNER_DEPTH_ERROR {
        return too_deep(pos);
    }
    Problem {
        pos,
        message: format!("invalid YAML: {}", error.info()),
        hint: Some(
            "YAML is indentation-sensitive: check the indentation here and above, and quote values that contain \
                `: `, ` #` or start with `*`, `&`, `!`, `{`, `[`, `%` or `@`"
                .to_owned(),
        ),
    }
}

/// A mapping or sequence whose end has not been read yet.
enum Container {
    Sequence(Vec<Value>),
    Mapping {
        mapping: Mapping,
        /// The key whose value is being read, with its position, and whether it repeats an
        /// earlier key (then the value is read and dropped).
        key: Option<(String, Pos, Repeated)>,
        /// Where each key was first written.
        seen: HashMap<String, Pos>,
    },
}

impl Container {
    fn mapping() -> Container {
        Container::Mapping { mapping: Mapping::new(), key: None, seen: HashMap::new() }
    }

    fn awaits_key(&self) -> bool {
        matches!(self, Container::Mapping { key: None, .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeated {
    No,
    Yes,
}

struct Frame {
    container: Container,
    anchor: usize,
    /// `Builder::nodes` when this container started, to size it for its anchor.
    nodes_before: usize,
    /// The deepest nesting among this container's children (0 for scalars only).
    child_height: usize,
}

/// A value an anchor names, kept to expand its aliases.
struct Anchored {
    value: Value,
    nodes: usize,
    height: usize,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// The path of the container on top of the stack.
    path: KeyPath,
    root: Option<Value>,
    anchors: HashMap<usize, Anchored>,
    /// Values read so far, aliases counted with the size of what they expand to.
    nodes: usize,
    positions: Positions,
    problems: Vec<Problem>,
}

impl Builder {
    fn scalar(&mut self, text: String, style: TScalarStyle, anchor: usize, pos: Pos) -> Result<(), Problem> {
        self.count(1, pos)?;
        if let Some(frame) = self.stack.last_mut() {
            if let Container::Mapping { key: key @ None, seen, .. } = &mut frame.container {
                // A block mapping is marked where its first key's `:` is; it starts at that key.
                if seen.is_empty() {
                    if let Some(located) = self.positions.0.get_mut(&self.path) {
                        located.value = located.value.min(pos);
                    }
                }
                let repeated = match seen.get(&text) {
                    Some(first) => {
                        self.problems.push(Problem {
                            pos,
                            message: format!("duplicate key `{text}`"),
                            hint: Some(format!(
                                "`{text}` is already set at line {}; a key may appear only once in a mapping",
                                first.line
                            )),
                        });
                        Repeated::Yes
                    }
                    None => {
                        seen.insert(text.clone(), pos);
                        Repeated::No
                    }
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, Anchored { value: Value::String(text.clone()), nodes: 1, height: 0 });
                }
                *key = Some((text, pos, repeated));
                return Ok(());
            }
        }
        let value = resolve_scalar(text, style);
        if anchor > 0 {
            self.anchors.insert(anchor, Anchored { value: value.clone(), nodes: 1, height: 0 });
        }
        self.record(pos);
        self.attach(value, 0);
        Ok(())
    }

    fn start(&mut self, container: Container, anchor: usize, pos: Pos) -> Result<(), Problem> {
        self.refuse_complex_key(pos)?;
        self.count(1, pos)?;
        if self.stack.len() + 1 > MAX_NESTING_DEPTH {
            return Err(too_deep(pos));
        }
        self.record(pos);
        if let Some(segment) = self.child_segment() {
            self.path.0.push(segment);
        }
        self.stack.push(Frame { container, anchor, nodes_before: self.nodes - 1, child_height: 0 });
        Ok(())
    }

    fn end(&mut self) {
        let Some(frame) = self.stack.pop() else { return };
        let value = match frame.container {
            Container::Sequence(items) => Value::Sequence(items),
            Container::Mapping { mapping, .. } => Value::Mapping(mapping),
        };
        let height = frame.child_height + 1;
        if frame.anchor > 0 {
            let nodes = self.nodes - frame.nodes_before;
            self.anchors.insert(frame.anchor, Anchored { value: value.clone(), nodes, height });
        }
        if !self.stack.is_empty() {
            self.path.0.pop();
        }
        self.attach(value, height);
    }

    fn alias(&mut self, anchor: usize, pos: Pos) -> Result<(), Problem> {
        self.refuse_complex_key(pos)?;
        let Some(anchored) = self.anchors.get(&anchor) else {
            return Err(Problem {
                pos,
                message: "this alias refers to a value that contains it".to_owned(),
                hint: Some("an alias can only repeat a value that is complete where the alias is written".to_owned()),
            });
        };
        let (value, nodes, height) = (anchored.value.clone(), anchored.nodes, anchored.height);
        if self.stack.len() + height > MAX_NESTING_DEPTH {
            return Err(too_deep(pos));
        }
        self.count(nodes, pos)?;
        self.record(pos);
        self.attach(value, height);
        Ok(())
    }

    /// Report a tag other than YAML's own (`!!str`, …), such as GitLab's `!reference`: Gantry would
    /// otherwise read the tagged value as if the tag were not there.
    fn refuse_tag(&mut self, tag: Option<&Tag>, pos: Pos) {
        let Some(tag) = tag else { return };
        if tag.handle == CORE_TAG_PREFIX {
            return;
        }
        let written =
            if tag.handle == "!" { format!("!{}", tag.suffix) } else { format!("{}{}", tag.handle, tag.suffix) };
        self.problems.push(Problem {
            pos,
            message: format!("the YAML tag `{written}` is not supported"),
            hint: Some("remove the tag: a pipeline holds plain text, lists and mappings".to_owned()),
        });
    }

    /// A mapping key must be a scalar: `? [a, b]: c` and `*alias: c` are refused.
    fn refuse_complex_key(&self, pos: Pos) -> Result<(), Problem> {
        if self.stack.last().is_some_and(|frame| frame.container.awaits_key()) {
            return Err(Problem {
                pos,
                message: "a mapping key must be a plain name".to_owned(),
                hint: Some("write keys as plain words, not as lists, mappings or aliases".to_owned()),
            });
        }
        Ok(())
    }

    fn count(&mut self, nodes: usize, pos: Pos) -> Result<(), Problem> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(Problem {
                pos,
                message: format!("the file holds more than {MAX_NODES} YAML values once its aliases are expanded"),
                hint: Some("a pipeline needs far fewer: remove the aliases that repeat large values".to_owned()),
            });
        }
        Ok(())
    }

    /// The path segment the next value on top of the stack will have.
    fn child_segment(&self) -> Option<Segment> {
        match &self.stack.last()?.container {
            Container::Sequence(items) => Some(Segment::Index(items.len())),
            Container::Mapping { key, .. } => key.as_ref().map(|(key, _, _)| Segment::Key(key.clone())),
        }
    }

    /// Remember where the value about to be attached starts (and its key, in a mapping). Nothing
    /// inside the value of a repeated key is recorded: the first one's positions stay.
    fn record(&mut self, pos: Pos) {
        let inside_repeated = self
            .stack
            .iter()
            .any(|frame| matches!(frame.container, Container::Mapping { key: Some((_, _, Repeated::Yes)), .. }));
        if inside_repeated {
            return;
        }
        let key = match self.stack.last().map(|frame| &frame.container) {
            Some(Container::Mapping { key: Some((_, key_pos, _)), .. }) => Some(*key_pos),
            _ => None,
        };
        let mut path = self.path.clone();
        if let Some(segment) = self.child_segment() {
            path.0.push(segment);
        }
        self.positions.0.insert(path, Located { key, value: pos });
    }

    fn attach(&mut self, value: Value, height: usize) {
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(value);
            return;
        };
        frame.child_height = frame.child_height.max(height);
        match &mut frame.container {
            Container::Sequence(items) => items.push(value),
            Container::Mapping { mapping, key, .. } => {
                if let Some((key, _, Repeated::No)) = key.take() {
                    mapping.insert(Value::String(key), value);
                }
            }
        }
    }
}

/// What `!!` stands for: the tags of YAML itself (`!!str`, `!!int`, …), which are harmless.
const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// The scanner's message when flow collections nest deeper than it can count.
const SCANNER_DEPTH_ERROR: &str = "recursion limit exceeded";

fn too_deep(pos: Pos) -> Problem {
    Problem {
        pos,
        message: format!("values are nested more than {MAX_NESTING_DEPTH} levels deep"),
        hint: Some("a pipeline needs about five levels: flatten this value".to_owned()),
    }
}

/// A plain `~`, `null` or empty scalar is null; every other scalar is the text as written.
fn resolve_scalar(text: String, style: TScalarStyle) -> Value {
    let is_null = style == TScalarStyle::Plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL");
    if is_null {
        Value::Null
    } else {
        Value::String(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(document: &Document, path: &KeyPath) -> (usize, usize) {
        let pos = document.positions.value(path);
        (pos.line, pos.column)
    }

    #[test]
    fn positions_are_one_based_for_keys_and_values() {
        let text = "version: 1\nstages:\n  - name: a\n    needs: [b, c]\n";
        let document = read(text).unwrap();
        let stage = KeyPath::root().key("stages").index(0);
        assert_eq!(at(&document, &KeyPath::root().key("version")), (1, 10));
        assert_eq!(at(&document, &stage.key("name")), (3, 11));
        assert_eq!(at(&document, &stage.key("needs").index(1)), (4, 16));
        let key = document.positions.key(&stage.key("needs"));
        assert_eq!((key.line, key.column), (4, 5));
        assert_eq!(stage.key("needs").index(1).to_string(), "stages[0].needs[1]");
    }

    #[test]
    fn a_block_mapping_starts_at_its_first_key() {
        let document = read("# comment\nversion: 1\nstages:\n  - name: a\n    run: x\n  - {name: b}\n").unwrap();
        assert_eq!(at(&document, &KeyPath::root()), (2, 1));
        assert_eq!(at(&document, &KeyPath::root().key("stages").index(0)), (4, 5));
        assert_eq!(at(&document, &KeyPath::root().key("stages").index(1)), (6, 5));
    }

    #[test]
    fn the_positions_inside_a_repeated_key_are_the_first_ones() {
        let document = read("a: {x: 1}\nb: 2\na: {x: 3}\n").unwrap();
        assert_eq!(at(&document, &KeyPath::root().key("a").key("x")), (1, 8));
        assert_eq!(document.problems.len(), 1);
    }

    #[test]
    fn plain_scalars_stay_text_and_nulls_are_null() {
        let document = read("a: 1.10\nb: on\nc: ~\nd: 'null'\ne:\n").unwrap();
        let mapping = document.value.as_mapping().unwrap();
        assert_eq!(mapping.get("a"), Some(&Value::String("1.10".into())));
        assert_eq!(mapping.get("b"), Some(&Value::String("on".into())));
        assert_eq!(mapping.get("c"), Some(&Value::Null));
        assert_eq!(mapping.get("d"), Some(&Value::String("null".into())));
        assert_eq!(mapping.get("e"), Some(&Value::Null));
    }

    #[test]
    fn duplicate_keys_are_reported_and_the_first_is_kept() {
        let document = read("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(document.problems.len(), 1);
        assert_eq!(document.problems[0].pos, Pos { line: 3, column: 1 });
        assert!(document.problems[0].hint.as_deref().unwrap().contains("line 1"));
        assert_eq!(document.value.as_mapping().unwrap().get("a"), Some(&Value::String("1".into())));
        assert_eq!(at(&document, &KeyPath::root().key("a")), (1, 4));
    }

    #[test]
    fn small_aliases_expand_and_are_located_at_the_alias() {
        let document = read("base: &b [x, y]\nother: *b\n").unwrap();
        let mapping = document.value.as_mapping().unwrap();
        assert_eq!(mapping.get("other"), mapping.get("base"));
        assert_eq!(at(&document, &KeyPath::root().key("other").index(1)), (2, 8));
    }

    #[test]
    fn a_recursive_alias_is_refused() {
        let problem = read("a: &a [*a]\n").unwrap_err();
        assert!(problem.message.contains("contains it"), "{problem:?}");
    }

    #[test]
    fn a_syntax_error_is_located() {
        let problem = read("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(problem.message.starts_with("invalid YAML"), "{problem:?}");
        assert!(problem.pos.line >= 1);
    }

    #[test]
    fn a_second_document_is_refused() {
        let problem = read("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(problem.pos.line, 2);
        assert!(problem.message.contains("more than one"));
    }

    #[test]
    fn tags_other_than_yamls_own_are_reported() {
        let document = read("a: !!str 10\nb: !reference [x]\nc: !custom {d: 1}\n").unwrap();
        let found: Vec<(usize, usize, &str)> =
            document.problems.iter().map(|p| (p.pos.line, p.pos.column, p.message.as_str())).collect();
        assert_eq!(
            found,
            [
                // A tagged collection is located at its opening bracket.
                (2, 15, "the YAML tag `!reference` is not supported"),
                (3, 12, "the YAML tag `!custom` is not supported"),
            ]
        );
        assert_eq!(document.value.as_mapping().unwrap().get("a"), Some(&Value::String("10".into())));
    }

    #[test]
    fn an_empty_file_is_null() {
        assert_eq!(read("").unwrap().value, Value::Null);
        assert_eq!(read("# only a comment\n").unwrap().value, Value::Null);
    }
}
