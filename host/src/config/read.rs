//! Reading one TOML table into typed values: each key's type and unit is
//! checked as it is taken, every problem is recorded (none stops the
//! reading), and the keys nobody took are kept as [`ExtraSetting`]s, with
//! the closest known key of the table as a likely correction.
//!
//! Owns types and units only. Whether a value makes sense (a size of 0, a
//! timeout of zero) is for the config rules and the host's limits.

use std::collections::BTreeMap;
use std::time::Duration;

use super::diagnostic::{Diagnostic, ExtraSetting};
use super::units::{parse_duration, parse_size};

/// A table being read. Keys are removed as they are taken.
pub(super) struct Table {
    /// Prefix of every field path in this table: `pool.hpc.`, `host.`, ``.
    prefix: String,
    entries: toml::Table,
    /// Every key asked for, present or not: the table's known keys.
    known: Vec<&'static str>,
    pub(super) problems: Vec<Diagnostic>,
    extra: Vec<ExtraSetting>,
}

impl Table {
    pub(super) fn new(prefix: impl Into<String>, entries: toml::Table) -> Self {
        Table { prefix: prefix.into(), entries, known: Vec::new(), problems: Vec::new(), extra: Vec::new() }
    }

    /// The field path of `key` in this table.
    pub(super) fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        let field = self.field(key);
        self.problems.push(Diagnostic::error(field, message));
    }

    /// Whether `key` is present, without taking it.
    pub(super) fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Takes `key` as it is.
    pub(super) fn take(&mut self, key: &'static str) -> Option<toml::Value> {
        self.known.push(key);
        self.entries.remove(key)
    }

    /// Takes every key not taken yet: the legacy form's top level, read
    /// again as a pool table.
    pub(super) fn take_rest(&mut self) -> toml::Table {
        std::mem::take(&mut self.entries)
    }

    /// Takes `key` and converts it; a value `convert` refuses is a problem
    /// `must be EXPECTED (got VALUE)`.
    fn typed<T>(
        &mut self,
        key: &'static str,
        expected: &str,
        convert: impl FnOnce(&toml::Value) -> Option<T>,
    ) -> Option<T> {
        let value = self.take(key)?;
        let converted = convert(&value);
        if converted.is_none() {
            self.problem(key, format!("must be {expected} (got {})", describe(&value)));
        }
        converted
    }

    pub(super) fn string(&mut self, key: &'static str) -> Option<String> {
        self.typed(key, "a string", |v| v.as_str().map(str::to_owned))
    }

    pub(super) fn boolean(&mut self, key: &'static str) -> Option<bool> {
        self.typed(key, "true or false", toml::Value::as_bool)
    }

    pub(super) fn float(&mut self, key: &'static str) -> Option<f64> {
        self.typed(key, "a number", |v| v.as_float().or_else(|| v.as_integer().map(|n| n as f64)))
    }

    /// A whole number that fits `T` (unsigned types refuse negatives).
    pub(super) fn count<T: TryFrom<i64> + Into<u64> + Bounded>(&mut self, key: &'static str) -> Option<T> {
        let expected = format!("a whole number from 0 to {}", T::MAX.into());
        self.typed(key, &expected, |v| v.as_integer().and_then(|n| T::try_from(n).ok()))
    }

    pub(super) fn duration(&mut self, key: &'static str) -> Option<Duration> {
        self.parsed(key, "a duration such as \"30s\"", parse_duration)
    }

    /// A duration, or `"never"` (`None`).
    pub(super) fn duration_or_never(&mut self, key: &'static str) -> Option<Duration> {
        if self.entries.get(key).and_then(toml::Value::as_str) == Some("never") {
            self.take(key);
            return None;
        }
        self.duration(key)
    }

    pub(super) fn size(&mut self, key: &'static str) -> Option<u64> {
        self.parsed(key, "a size such as \"512MiB\"", parse_size)
    }

    /// A string parsed by `parse`, whose error names the problem.
    fn parsed<T>(&mut self, key: &'static str, expected: &str, parse: fn(&str) -> Result<T, String>) -> Option<T> {
        let text = self.typed(key, expected, |v| v.as_str().map(str::to_owned))?;
        parse(&text).map_err(|err| self.problem(key, err)).ok()
    }

    /// One of `choices` (`"process"`, `"thread"`).
    pub(super) fn choice<T: Copy>(&mut self, key: &'static str, what: &str, choices: &[(&str, T)]) -> Option<T> {
        let text = self.string(key)?;
        let found = choices.iter().find(|(name, _)| *name == text).map(|(_, value)| *value);
        if found.is_none() {
            let names: Vec<String> = choices.iter().map(|(name, _)| format!("\"{name}\"")).collect();
            self.problem(key, format!("`{text}` is not {what}; use {}", names.join(" or ")));
        }
        found
    }

    pub(super) fn strings(&mut self, key: &'static str) -> Vec<String> {
        self.typed(key, "a list of strings", |v| {
            v.as_array()?.iter().map(|item| item.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>()
        })
        .unwrap_or_default()
    }

    /// A table whose values are all strings.
    pub(super) fn string_map(&mut self, key: &'static str) -> BTreeMap<String, String> {
        self.typed(key, "a table of strings, e.g. { NAME = \"value\" }", |v| {
            v.as_table()?.iter().map(|(k, item)| Some((k.clone(), item.as_str()?.to_owned()))).collect::<Option<_>>()
        })
        .unwrap_or_default()
    }

    /// A nested table, read with its own prefix; give it back with
    /// [`Table::absorb`].
    pub(super) fn table(&mut self, key: &'static str) -> Table {
        let entries = self.typed(key, "a table", |v| v.as_table().cloned()).unwrap_or_default();
        Table::new(self.field(&format!("{key}.")), entries)
    }

    /// Takes back a nested table's problems, and its unknown keys as
    /// dotted keys of this table.
    pub(super) fn absorb(&mut self, key: &str, mut nested: Table) {
        let extra = nested.finish();
        self.problems.append(&mut nested.problems);
        self.extra.extend(extra.into_iter().map(|e| ExtraSetting { key: format!("{key}.{}", e.key), ..e }));
    }

    /// The keys left over, with the closest known key of this table for
    /// each; the table's own nested leftovers come first.
    pub(super) fn finish(&mut self) -> Vec<ExtraSetting> {
        let mut extra = std::mem::take(&mut self.extra);
        for (key, value) in std::mem::take(&mut self.entries) {
            let closest_known = closest(&key, &self.known).map(str::to_owned);
            extra.push(ExtraSetting { key, value: value.into(), closest_known });
        }
        extra
    }
}

/// The largest value of an unsigned integer type, for messages.
pub(super) trait Bounded: Into<u64> {
    const MAX: Self;
}

impl Bounded for u32 {
    const MAX: u32 = u32::MAX;
}

impl Bounded for u64 {
    const MAX: u64 = i64::MAX as u64;
}

/// The known key within typo distance of `key`.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(distance, k)| *distance <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// A value as the operator wrote it, for messages: `"two"`, `-1`, `a table`.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
            value.to_string()
        }
        toml::Value::Datetime(date) => format!("the date {date}"),
        toml::Value::Array(_) => "a list".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        Table::new("pool.p.", text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn types_are_checked_and_every_problem_kept() {
        let mut t = table("size = \"two\"\nqueue_limit = -1\nflag = 3\nttl = \"5\"\n");
        assert_eq!(t.count::<u32>("size"), None);
        assert_eq!(t.count::<u64>("queue_limit"), None);
        assert_eq!(t.boolean("flag"), None);
        assert_eq!(t.duration("ttl"), None);
        let messages: Vec<String> = t.problems.iter().map(|d| format!("{}: {}", d.field, d.message)).collect();
        assert_eq!(
            messages,
            [
                "pool.p.size: must be a whole number from 0 to 4294967295 (got \"two\")",
                "pool.p.queue_limit: must be a whole number from 0 to 9223372036854775807 (got -1)",
                "pool.p.flag: must be true or false (got 3)",
                "pool.p.ttl: `5` has no unit: write e.g. \"5s\" or \"5ms\"",
            ]
        );
    }

    #[test]
    fn leftover_keys_become_extras_with_a_likely_correction() {
        let mut t = table("sise = 2\nflavour = \"x\"\n[limits]\nfule = 1\n");
        t.count::<u32>("size");
        let mut limits = t.table("limits");
        limits.count::<u64>("fuel");
        t.absorb("limits", limits);
        let extra = t.finish();
        let keys: Vec<(&str, Option<&str>)> =
            extra.iter().map(|e| (e.key.as_str(), e.closest_known.as_deref())).collect();
        assert_eq!(keys, [("limits.fule", Some("fuel")), ("flavour", None), ("sise", Some("size"))]);
        assert!(t.problems.is_empty());
    }
}
