//! Reading a configuration: the file over the defaults, the environment
//! over the file, with every problem reported by its key path.

use std::path::Path;

use super::{Namespace, Settings};

/// One problem in a configuration, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// `section.key`, `namespace[1].publish`, or `HERALD_X (section.key)`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

pub(super) fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Compares `given` with the shape of `model` (the defaults), reporting
/// unknown keys and wrong types under `path`.
fn check_shape(path: &str, given: &toml::Value, model: &toml::Value, out: &mut Vec<ConfigError>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (given, model) {
        (toml::Value::Table(g), toml::Value::Table(m)) => {
            // `kafka.client` is free-form: any string → string.
            if path == "kafka.client" {
                for (k, v) in g {
                    if !v.is_str() {
                        out.push(err(
                            join(k),
                            format!("must be a string, not {}", type_name(v)),
                        ));
                    }
                }
                return;
            }
            for (k, v) in g {
                match m.get(k) {
                    Some(mv) => check_shape(&join(k), v, mv, out),
                    None => out.push(err(join(k), "unknown key")),
                }
            }
        }
        (toml::Value::Array(g), toml::Value::Array(m)) if path == "namespace" => {
            let model = m.first().cloned().unwrap_or_else(|| {
                toml::Value::try_from(Namespace::default()).unwrap_or(toml::Value::Boolean(false))
            });
            for (i, v) in g.iter().enumerate() {
                check_shape(&format!("namespace[{i}]"), v, &model, out);
            }
        }
        (g, m) if std::mem::discriminant(g) == std::mem::discriminant(m) => {}
        (g, m) => out.push(err(
            path,
            format!("must be {}, not {}", type_name(m), type_name(g)),
        )),
    }
}

/// The environment variable that overrides `path`.
pub fn env_name(path: &str) -> String {
    format!("HERALD_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// Applies `HERALD_*` overrides to every scalar key of `value`.
fn apply_env(
    path: &str,
    value: &mut toml::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Vec<ConfigError>,
) {
    let toml::Value::Table(t) = value else {
        return;
    };
    for (k, v) in t.iter_mut() {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if p == "namespace" || p == "kafka.client" {
            continue;
        }
        if v.is_table() {
            apply_env(&p, v, lookup, out);
            continue;
        }
        let name = env_name(&p);
        let Some(raw) = lookup(&name) else {
            continue;
        };
        let parsed = match &*v {
            toml::Value::String(_) => Ok(toml::Value::String(raw)),
            toml::Value::Integer(_) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|e| format!("must be an integer: {e}")),
            toml::Value::Boolean(_) => raw
                .trim()
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| "must be true or false".to_string()),
            toml::Value::Array(_) => Ok(toml::Value::Array(
                raw.split(',')
                    .map(|s| toml::Value::String(s.trim().to_owned()))
                    .collect(),
            )),
            other => Err(format!(
                "cannot be set from the environment ({})",
                type_name(other)
            )),
        };
        match parsed {
            Ok(n) => *v = n,
            Err(m) => out.push(err(format!("{name} ({p})"), m)),
        }
    }
}

impl Settings {
    /// Loads `file` (when given) over the defaults, then the environment
    /// through `lookup`. Returns every problem found, not just the first.
    pub fn load(
        file: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigErrors> {
        let text = match file {
            Some(f) => std::fs::read_to_string(f).map_err(|e| {
                ConfigErrors(vec![err(
                    f.display().to_string(),
                    format!("cannot read: {e}"),
                )])
            })?,
            None => String::new(),
        };
        Self::from_toml(&text, lookup)
    }

    /// [`Settings::load`] from TOML text.
    pub fn from_toml(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigErrors> {
        let mut errors = Vec::new();
        let given: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![err(
                "(file)",
                format!("not valid TOML: {}", e.message()),
            )])
        })?;
        let given = toml::Value::Table(given);
        let defaults = toml::Value::try_from(Settings::default())
            .map_err(|e| ConfigErrors(vec![err("(defaults)", e.to_string())]))?;
        check_shape("", &given, &defaults, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Defaults, with the file's keys laid over them.
        let mut merged = defaults;
        merge(&mut merged, given);
        apply_env("", &mut merged, lookup, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Values of the right TOML type can still be out of range (a negative
        // count): the path of that one comes from serde_path_to_error.
        let settings: Settings = serde_path_to_error::deserialize(merged).map_err(|e| {
            let path = e.path().to_string();
            ConfigErrors(vec![err(path, e.into_inner().message().to_owned())])
        })?;
        settings.validate().map_err(ConfigErrors)?;
        Ok(settings)
    }
}

/// Lays `over`'s keys onto `base` (tables merge; anything else replaces).
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_table() && v.is_table() && k != "client" => {
                        merge(slot, v)
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}
