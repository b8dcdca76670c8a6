//! Serde types that mirror `.gantry.yml` as written (CONTRACT.md §1), and the split of a YAML
//! value into them.
//!
//! The split deserializes each section, each host and each stage on its own, through
//! `serde_ignored` (every unknown key is collected, not just the first) and `serde_path_to_error`
//! (a type error knows its path), so one mistyped stage does not hide the problems of the others.
//! Problems are returned as paths; `validate` turns them into positioned diagnostics. Nothing here
//! judges meaning (names, references, durations): every field that could be missing is an
//! `Option`, and `validate` says what is required.

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_yaml::Value;

use super::yaml::{KeyPath, Segment};

/// The whole file. Sections that failed to deserialize are absent (their problem is reported).
#[derive(Debug, Default)]
pub(super) struct RawFile {
    pub(super) version: Option<String>,
    /// In file order. A host whose settings failed to deserialize keeps its role, with defaults.
    pub(super) hosts: Vec<(String, RawHost)>,
    pub(super) push: Option<RawPush>,
    pub(super) env: Option<EnvMap>,
    pub(super) stages: Vec<StageSlot>,
    pub(super) on: Option<RawOn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a host: a mapping with `image`, `size`, `setup`, `timeout` or `secrets`")]
pub(super) struct RawHost {
    pub(super) image: Option<String>,
    pub(super) size: Option<String>,
    pub(super) setup: Option<Script>,
    /// How long `setup` may run (an extension of the contract; the default is the step default).
    pub(super) timeout: Option<String>,
    /// Secrets the setup gets as environment variables.
    pub(super) secrets: Option<Names>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping with `code`, `data` or `config`")]
pub(super) struct RawPush {
    pub(super) code: Option<RawCode>,
    pub(super) data: Option<Vec<RawData>>,
    pub(super) config: Option<Vec<RawConfig>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping with `to`")]
pub(super) struct RawCode {
    pub(super) to: Option<Names>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a data push: a mapping with `from` and `to`")]
pub(super) struct RawData {
    pub(super) from: Option<String>,
    pub(super) to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a config push: a mapping with `template` and `to`")]
pub(super) struct RawConfig {
    pub(super) template: Option<String>,
    /// `HOST:PATH`.
    pub(super) to: Option<String>,
    /// Secrets the template may use as `secrets.NAME`.
    pub(super) secrets: Option<Names>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a stage: a mapping with `name`, `host` and `run`")]
pub(super) struct RawStage {
    pub(super) name: Option<String>,
    pub(super) host: Option<String>,
    pub(super) needs: Option<Names>,
    pub(super) timeout: Option<String>,
    pub(super) env: Option<EnvMap>,
    pub(super) run: Option<Script>,
    pub(super) reports: Option<Names>,
    pub(super) secrets: Option<Names>,
}

/// A stage as far as it could be read.
#[derive(Debug)]
pub(super) enum StageSlot {
    Parsed(RawStage),
    /// The stage failed to deserialize; its `name`, when readable, is kept so that `needs` naming
    /// it are not reported a second time.
    Broken {
        name: Option<String>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping with `branches` or `pull_requests`")]
pub(super) struct RawOn {
    pub(super) branches: Option<Names>,
    pub(super) pull_requests: Option<RawPullRequests>,
}

/// `on.pull_requests`: `true`, `false`, or `{branches: [...]}` (the requests' target branches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawPullRequests {
    Enabled(bool),
    Branches(Option<Names>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping with `branches`")]
struct RawPullRequestBranches {
    branches: Option<Names>,
}

impl<'de> Deserialize<'de> for RawPullRequests {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PullRequestsVisitor;
        impl<'de> Visitor<'de> for PullRequestsVisitor {
            type Value = RawPullRequests;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`true`, `false` or a mapping with `branches`")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawPullRequests, E> {
                Ok(RawPullRequests::Enabled(v))
            }
            // The YAML reader keeps every scalar as text; YAML 1.2's booleans are these.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPullRequests, E> {
                match v {
                    "true" | "True" | "TRUE" => Ok(RawPullRequests::Enabled(true)),
                    "false" | "False" | "FALSE" => Ok(RawPullRequests::Enabled(false)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawPullRequests, A::Error> {
                // Through the map access the caller gave (serde_ignored's), so an unknown key in
                // here is reported like any other.
                let branches = RawPullRequestBranches::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawPullRequests::Branches(branches.branches))
            }
        }
        deserializer.deserialize_any(PullRequestsVisitor)
    }
}

/// A shell script: a string, or a list of lines joined with `\n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Script(pub(super) String);

/// One name or a list of names (`needs: unit` is read as `needs: [unit]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Names(pub(super) Vec<String>);

/// Environment variables in file order. Values are text; a YAML null is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct EnvMap(pub(super) Vec<(String, String)>);

/// The keys each mapping of the file accepts, for unknown-key hints.
pub(super) const FILE_KEYS: &[&str] = &["version", "hosts", "push", "env", "stages", "on"];
pub(super) const HOST_KEYS: &[&str] = &["image", "size", "setup", "timeout", "secrets"];
pub(super) const PUSH_KEYS: &[&str] = &["code", "data", "config"];
pub(super) const CODE_KEYS: &[&str] = &["to"];
pub(super) const DATA_KEYS: &[&str] = &["from", "to"];
pub(super) const CONFIG_KEYS: &[&str] = &["template", "to", "secrets"];
pub(super) const STAGE_KEYS: &[&str] = &["name", "host", "needs", "timeout", "env", "run", "reports", "secrets"];
pub(super) const ON_KEYS: &[&str] = &["branches", "pull_requests"];
pub(super) const PULL_REQUEST_KEYS: &[&str] = &["branches"];

/// The keys the mapping at `parent` accepts; empty for free-form mappings such as `env`.
pub(super) fn known_keys(parent: &KeyPath) -> &'static [&'static str] {
    let key = |segment: &Segment, name: &str| matches!(segment, Segment::Key(key) if key == name);
    match parent.0.as_slice() {
        [] => FILE_KEYS,
        [hosts, Segment::Key(_)] if key(hosts, "hosts") => HOST_KEYS,
        [push] if key(push, "push") => PUSH_KEYS,
        [push, code] if key(push, "push") && key(code, "code") => CODE_KEYS,
        [push, data, Segment::Index(_)] if key(push, "push") && key(data, "data") => DATA_KEYS,
        [push, config, Segment::Index(_)] if key(push, "push") && key(config, "config") => CONFIG_KEYS,
        [stages, Segment::Index(_)] if key(stages, "stages") => STAGE_KEYS,
        [on] if key(on, "on") => ON_KEYS,
        [on, pull_requests] if key(on, "on") && key(pull_requests, "pull_requests") => PULL_REQUEST_KEYS,
        _ => &[],
    }
}

/// A problem found while splitting the value into the raw types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawProblem {
    /// A key the file format does not have.
    UnknownKey { path: KeyPath },
    /// A value of the wrong shape, with serde's description of what was expected.
    Invalid { path: KeyPath, message: String },
}

/// Split the document into the raw types, collecting every problem. `None` when the document is
/// not a mapping at all (the single problem says so): nothing else can be checked then.
pub(super) fn split(value: Value, problems: &mut Vec<RawProblem>) -> Option<RawFile> {
    let root = KeyPath::root();
    let mapping = match value {
        Value::Mapping(mapping) => mapping,
        Value::Null => {
            problems.push(RawProblem::Invalid { path: root, message: "the file is empty".to_owned() });
            return None;
        }
        other => {
            problems.push(RawProblem::Invalid {
                path: root,
                message: format!(
                    "the file holds {}, not a mapping of `version`, `hosts` and `stages`",
                    describe(&other)
                ),
            });
            return None;
        }
    };
    let mut file = RawFile::default();
    for (key, value) in mapping {
        let Some(key) = key.as_str() else { continue };
        let path = root.key(key);
        match key {
            "version" => file.version = typed::<Option<String>>(value, &path, problems).flatten(),
            "hosts" => file.hosts = split_hosts(value, &path, problems),
            "push" => file.push = typed::<Option<RawPush>>(value, &path, problems).flatten(),
            "env" => file.env = typed::<Option<EnvMap>>(value, &path, problems).flatten(),
            "stages" => file.stages = split_stages(value, &path, problems),
            "on" => file.on = typed::<Option<RawOn>>(value, &path, problems).flatten(),
            _ => problems.push(RawProblem::UnknownKey { path }),
        }
    }
    Some(file)
}

fn split_hosts(value: Value, path: &KeyPath, problems: &mut Vec<RawProblem>) -> Vec<(String, RawHost)> {
    let mapping = match value {
        Value::Mapping(mapping) => mapping,
        Value::Null => return Vec::new(),
        other => {
            problems.push(RawProblem::Invalid {
                path: path.clone(),
                message: format!("`hosts` holds {}, not a mapping of host roles", describe(&other)),
            });
            return Vec::new();
        }
    };
    let mut hosts = Vec::new();
    for (role, value) in mapping {
        let Some(role) = role.as_str() else { continue };
        let host = typed::<Option<RawHost>>(value, &path.key(role), problems).flatten().unwrap_or_default();
        hosts.push((role.to_owned(), host));
    }
    hosts
}

fn split_stages(value: Value, path: &KeyPath, problems: &mut Vec<RawProblem>) -> Vec<StageSlot> {
    let items = match value {
        Value::Sequence(items) => items,
        Value::Null => return Vec::new(),
        other => {
            problems.push(RawProblem::Invalid {
                path: path.clone(),
                message: format!("`stages` holds {}, not a list of stages", describe(&other)),
            });
            return Vec::new();
        }
    };
    let mut stages = Vec::new();
    for (index, value) in items.into_iter().enumerate() {
        let name = value.get("name").and_then(Value::as_str).map(str::to_owned);
        stages.push(match typed::<RawStage>(value, &path.index(index), problems) {
            Some(stage) => StageSlot::Parsed(stage),
            None => StageSlot::Broken { name },
        });
    }
    stages
}

/// Deserialize `value` (found at `base`) as `T`, recording its unknown keys and its type error.
fn typed<T: DeserializeOwned>(value: Value, base: &KeyPath, problems: &mut Vec<RawProblem>) -> Option<T> {
    let mut unknown = Vec::new();
    let result = {
        let mut record = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
        let deserializer = serde_ignored::Deserializer::new(value, &mut record);
        serde_path_to_error::deserialize::<_, T>(deserializer)
    };
    problems.extend(unknown.into_iter().map(|tail| RawProblem::UnknownKey { path: base.join(&tail) }));
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            let mut path = base.clone();
            for segment in error.path().iter() {
                match segment {
                    serde_path_to_error::Segment::Seq { index } => path.0.push(Segment::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => path.0.push(Segment::Key(key.clone())),
                    serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
                }
            }
            problems.push(RawProblem::Invalid { path, message: error.into_inner().to_string() });
            None
        }
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> KeyPath {
    match path {
        serde_ignored::Path::Root => KeyPath::root(),
        serde_ignored::Path::Seq { parent, index } => ignored_path(parent).index(*index),
        serde_ignored::Path::Map { parent, key } => ignored_path(parent).key(key),
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// How a value looks, for messages: "a list", "the text `x`".
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("the text `{s}`"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(_) => "a tagged value".to_owned(),
    }
}

/// Accepts the text of any scalar. The YAML reader keeps every scalar as text, but the raw types
/// are also correct over a resolving deserializer (numbers and booleans become their text).
struct ScalarText(String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a text value (write \"\" for an empty one)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ScalarText, E> {
                Ok(ScalarText(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// One text or a list of texts, the shape shared by [`Script`] and [`Names`].
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D, expecting: &'static str) -> Result<Vec<String>, D::Error> {
    struct OneOrMany(&'static str);
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<String>, E> {
            Ok(vec![v])
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(ScalarText(item)) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }
    }
    deserializer.deserialize_any(OneOrMany(expecting))
}

impl<'de> Deserialize<'de> for Script {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let lines = one_or_many(deserializer, "a shell script: a text or a list of lines")?;
        Ok(Script(lines.join("\n")))
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        one_or_many(deserializer, "a name or a list of names").map(Names)
    }
}

impl<'de> Deserialize<'de> for EnvMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of environment variables, `NAME: value`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvMap, A::Error> {
                let mut vars = Vec::new();
                while let Some((ScalarText(name), ScalarText(value))) = map.next_entry()? {
                    vars.push((name, value));
                }
                Ok(EnvMap(vars))
            }
        }
        deserializer.deserialize_map(EnvVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::yaml;

    fn split_text(text: &str) -> (Option<RawFile>, Vec<RawProblem>) {
        let document = yaml::read(text).unwrap();
        let mut problems = Vec::new();
        (split(document.value, &mut problems), problems)
    }

    #[test]
    fn a_full_file_splits_into_the_raw_types() {
        let text = concat!(
            "version: 1\n",
            "hosts:\n",
            "  db:\n",
            "    image: debian-12\n",
            "    setup: [a, b]\n",
            "  web:\n",
            "push:\n",
            "  code: {to: [web]}\n",
            "  data: [{from: x, to: db}]\n",
            "  config: [{template: t, to: 'web:.env'}]\n",
            "env: {PORT: 5432, DEBUG: true}\n",
            "stages:\n",
            "  - {name: s, host: web, needs: other, run: make, reports: [r.xml], timeout: 5m, env: {A: b}}\n",
            "on: {branches: [main]}\n",
        );
        let (file, problems) = split_text(text);
        assert_eq!(problems, []);
        let file = file.unwrap();
        assert_eq!(file.version.as_deref(), Some("1"));
        let roles: Vec<_> = file.hosts.iter().map(|(role, _)| role.as_str()).collect();
        assert_eq!(roles, ["db", "web"]);
        assert_eq!(file.hosts[0].1.setup, Some(Script("a\nb".into())));
        assert_eq!(
            file.env.unwrap().0,
            [("PORT".to_owned(), "5432".to_owned()), ("DEBUG".to_owned(), "true".to_owned())]
        );
        let StageSlot::Parsed(stage) = &file.stages[0] else { panic!("stage did not parse") };
        assert_eq!(stage.needs, Some(Names(vec!["other".into()])));
        assert_eq!(file.push.unwrap().config.unwrap()[0].to.as_deref(), Some("web:.env"));
    }

    #[test]
    fn every_unknown_key_is_collected_with_its_path() {
        let text = "version: 1\nhost: {}\nhosts: {web: {imgae: x}}\nstages:\n  - {name: a, rnu: x}\n  - {name: b, \
            nedes: [a]}\n";
        let (_, problems) = split_text(text);
        let paths: Vec<String> = problems
            .iter()
            .map(|problem| match problem {
                RawProblem::UnknownKey { path } => path.to_string(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(paths, ["host", "hosts.web.imgae", "stages[0].rnu", "stages[1].nedes"]);
    }

    #[test]
    fn a_type_error_in_one_stage_keeps_the_others() {
        let text = "stages:\n  - {name: a, run: {x: 1}}\n  - {name: b, env: [x]}\n  - {name: c, run: ok}\n";
        let (file, problems) = split_text(text);
        let paths: Vec<String> = problems
            .iter()
            .map(|problem| match problem {
                RawProblem::Invalid { path, .. } => path.to_string(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(paths, ["stages[0].run", "stages[1].env"]);
        let file = file.unwrap();
        assert!(matches!(&file.stages[0], StageSlot::Broken { name: Some(name) } if name == "a"));
        assert!(matches!(&file.stages[2], StageSlot::Parsed(stage) if stage.run == Some(Script("ok".into()))));
    }

    #[test]
    fn known_keys_follow_the_path_shape() {
        assert_eq!(known_keys(&KeyPath::root()), FILE_KEYS);
        assert_eq!(known_keys(&KeyPath::root().key("stages").index(3)), STAGE_KEYS);
        assert_eq!(known_keys(&KeyPath::root().key("push").key("config").index(0)), CONFIG_KEYS);
        assert!(known_keys(&KeyPath::root().key("env")).is_empty());
    }

    /// The key lists used for hints must match the serde types exactly.
    #[test]
    fn known_key_lists_match_the_serde_types() {
        fn all_keys_accepted<T: DeserializeOwned>(keys: &[&str]) {
            let mapping: serde_yaml::Mapping =
                keys.iter().map(|key| (Value::String((*key).to_owned()), Value::Null)).collect();
            let mut problems = Vec::new();
            let parsed = typed::<T>(Value::Mapping(mapping), &KeyPath::root(), &mut problems);
            assert!(parsed.is_some() && problems.is_empty(), "{keys:?}: {problems:?}");
        }
        all_keys_accepted::<RawHost>(HOST_KEYS);
        all_keys_accepted::<RawPush>(PUSH_KEYS);
        all_keys_accepted::<RawCode>(CODE_KEYS);
        all_keys_accepted::<RawData>(DATA_KEYS);
        all_keys_accepted::<RawConfig>(CONFIG_KEYS);
        all_keys_accepted::<RawStage>(STAGE_KEYS);
        all_keys_accepted::<RawOn>(ON_KEYS);
        all_keys_accepted::<RawPullRequestBranches>(PULL_REQUEST_KEYS);
    }
}
