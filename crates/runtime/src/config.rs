//! Configuration from `CAIRN_*` environment variables and an optional TOML file.
//!
//! Every variable is declared once as a [`Var`] (name, default, documentation) by the
//! crate that reads it; the binary gathers the declarations, so an unknown key in the
//! file is an error and `cairn config` can print the whole table. Environment variables
//! win over the file, the file over the defaults. Errors name the variable (or file
//! key) and the bad value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The variable that points at the optional configuration file.
pub const CONFIG_FILE: Var = Var {
    name: "CAIRN_CONFIG_FILE",
    default: "",
    doc: "Optional TOML file with the same settings: keys are the variable names without CAIRN_, in lower case (http_addr = \"0.0.0.0:8080\"). Environment variables win over it.",
};

/// One configuration variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// The environment variable, `CAIRN_` and upper case.
    pub name: &'static str,
    /// The value used when neither the environment nor the file sets it ("" = unset).
    pub default: &'static str,
    /// What it does, for people: printed by `cairn config` and copied into the README.
    pub doc: &'static str,
}

impl Var {
    /// The key for this variable in the configuration file.
    pub fn file_key(&self) -> String {
        self.name.trim_start_matches("CAIRN_").to_ascii_lowercase()
    }
}

/// Where a value came from, so an error can point there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Environment,
    File(PathBuf),
    Default,
}

/// A configuration problem, naming the variable and the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}{value}{origin}: {reason}")]
    Invalid {
        var: String,
        value: ValueNote,
        origin: OriginNote,
        reason: String,
    },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Says " (from file X)" after a value that came from the file; nothing otherwise.
#[derive(Debug, Clone)]
pub struct OriginNote(Origin);

impl fmt::Display for OriginNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Origin::File(path) => write!(f, " (from {})", path.display()),
            Origin::Default => write!(f, " (the default)"),
            Origin::Environment => Ok(()),
        }
    }
}

/// Shows `="value"` after the variable's name, or nothing for a secret.
#[derive(Debug, Clone)]
pub struct ValueNote(Option<String>);

impl fmt::Display for ValueNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => write!(f, "={value:?}"),
            None => Ok(()),
        }
    }
}

/// The raw settings: every known variable's value and where it came from.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: BTreeMap<&'static str, (String, Origin)>,
}

impl Settings {
    /// Reads the process environment and, when `CAIRN_CONFIG_FILE` is set, the file.
    /// `known` is every variable the program reads.
    pub fn from_env(known: &[Var]) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(name, _)| name.starts_with("CAIRN_"))
            .collect();
        let file = match env.get(CONFIG_FILE.name).filter(|path| !path.is_empty()) {
            Some(path) => Some(read_file(&PathBuf::from(path), known)?),
            None => None,
        };
        Ok(Self::resolve(known, &env, file.as_ref()))
    }

    /// Settings from explicit pairs (`("CAIRN_HTTP_ADDR", "127.0.0.1:0")`) over the
    /// defaults; for tests and for the binary's own overrides.
    pub fn from_pairs<'a>(
        known: &[Var],
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let env: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Self::resolve(known, &env, None)
    }

    fn resolve(
        known: &[Var],
        env: &BTreeMap<String, String>,
        file: Option<&(PathBuf, BTreeMap<String, String>)>,
    ) -> Self {
        let mut values = BTreeMap::new();
        for var in known {
            let value = if let Some(value) = env.get(var.name) {
                (value.clone(), Origin::Environment)
            } else if let Some(value) = file.and_then(|(_, map)| map.get(var.name)) {
                let path = file.map(|(path, _)| path.clone()).unwrap_or_default();
                (value.clone(), Origin::File(path))
            } else {
                (var.default.to_string(), Origin::Default)
            };
            values.insert(var.name, value);
        }
        Self { values }
    }

    /// Sets a value as if it came from the environment (the binary's own choices, such as
    /// `cairn up` pointing every module at the NATS server it started).
    pub fn set(&mut self, var: &Var, value: impl Into<String>) {
        self.values
            .insert(var.name, (value.into(), Origin::Environment));
    }

    /// The value as a string; "" when unset. Panics never: an undeclared variable reads
    /// as its declaration's default.
    pub fn string(&self, var: &Var) -> String {
        self.values
            .get(var.name)
            .map(|(value, _)| value.clone())
            .unwrap_or_else(|| var.default.to_string())
    }

    /// Whether the environment or the file set `var` (rather than its default applying).
    pub fn is_set(&self, var: &Var) -> bool {
        self.values
            .get(var.name)
            .is_some_and(|(_, origin)| *origin != Origin::Default)
    }

    /// The value, or `None` when it is empty.
    pub fn optional(&self, var: &Var) -> Option<String> {
        Some(self.string(var)).filter(|value| !value.trim().is_empty())
    }

    /// An error about `var`'s current value, which it quotes.
    pub fn invalid(&self, var: &Var, reason: impl Into<String>) -> ConfigError {
        self.error(var, true, reason.into())
    }

    /// An error about a secret variable's value, which it does not quote.
    pub fn invalid_secret(&self, var: &Var, reason: impl Into<String>) -> ConfigError {
        self.error(var, false, reason.into())
    }

    fn error(&self, var: &Var, quote: bool, reason: String) -> ConfigError {
        let (value, origin) = self
            .values
            .get(var.name)
            .cloned()
            .unwrap_or_else(|| (var.default.to_string(), Origin::Default));
        ConfigError::Invalid {
            var: var.name.to_string(),
            value: ValueNote(quote.then_some(value)),
            origin: OriginNote(origin),
            reason,
        }
    }

    /// Parses the value with `FromStr`, naming `what` it should be on failure.
    pub fn parse<T>(&self, var: &Var, what: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let value = self.string(var);
        value
            .trim()
            .parse()
            .map_err(|err| self.invalid(var, format!("not {what}: {err}")))
    }

    /// A `host:port` socket address.
    pub fn socket_addr(&self, var: &Var) -> Result<SocketAddr, ConfigError> {
        self.parse(var, "a socket address (host:port, e.g. 127.0.0.1:8080)")
    }

    /// A whole number at least `min`.
    pub fn number(&self, var: &Var, min: u64) -> Result<u64, ConfigError> {
        let value: u64 = self.parse(var, "a whole number")?;
        if value < min {
            return Err(self.invalid(var, format!("must be at least {min}")));
        }
        Ok(value)
    }

    /// `true`/`false` (also 1/0, yes/no, on/off).
    pub fn flag(&self, var: &Var) -> Result<bool, ConfigError> {
        match self.string(var).trim().to_ascii_lowercase().as_str() {
            "" | "false" | "0" | "no" | "off" => Ok(false),
            "true" | "1" | "yes" | "on" => Ok(true),
            _ => Err(self.invalid(var, "not a boolean (true or false)")),
        }
    }

    /// A duration such as `500ms`, `30s`, `5m`, `2h`, `7d`.
    pub fn duration(&self, var: &Var) -> Result<Duration, ConfigError> {
        parse_duration(self.string(var).trim()).map_err(|reason| self.invalid(var, reason))
    }

    /// A size such as `512`, `64KB`, `10MB`, `2GB` (powers of 1024); `-1` or "" for none.
    pub fn size(&self, var: &Var) -> Result<Option<u64>, ConfigError> {
        let value = self.string(var);
        let value = value.trim();
        if value.is_empty() || value == "-1" {
            return Ok(None);
        }
        parse_size(value)
            .map(Some)
            .map_err(|reason| self.invalid(var, reason))
    }

    /// A directory path.
    pub fn path(&self, var: &Var) -> PathBuf {
        PathBuf::from(self.string(var))
    }
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| "not a duration (e.g. 500ms, 30s, 5m, 2h, 7d)".to_string())?;
    let millis = match unit {
        "ms" => number,
        "" | "s" => number.saturating_mul(1_000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        "d" => number.saturating_mul(86_400_000),
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_millis(millis))
}

/// Parses `512`, `64KB`, `10MB`, `2GB`, `1TB` (powers of 1024).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| "not a size (e.g. 512, 64KB, 10MB, 2GB)".to_string())?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "K" | "KIB" => 1 << 10,
        "MB" | "M" | "MIB" => 1 << 20,
        "GB" | "G" | "GIB" => 1 << 30,
        "TB" | "T" | "TIB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use KB, MB, GB or TB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .filter(|bytes| i64::try_from(*bytes).is_ok())
        .ok_or_else(|| "too large".to_string())
}

fn read_file(
    path: &PathBuf,
    known: &[Var],
) -> Result<(PathBuf, BTreeMap<String, String>), ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|err| file_error(err.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| file_error(err.to_string()))?;
    let mut values = BTreeMap::new();
    for (key, value) in table {
        let Some(var) = known.iter().find(|var| var.file_key() == key) else {
            return Err(file_error(format!(
                "unknown key {key:?}; known keys are the CAIRN_ variables in lower case without the prefix (see `cairn config`)"
            )));
        };
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Float(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(file_error(format!(
                    "{key}: expected a string, number, boolean or list, found {}",
                    other.type_str()
                )));
            }
        };
        values.insert(var.name.to_string(), value);
    }
    Ok((path.clone(), values))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Var = Var {
        name: "CAIRN_TEST_ADDR",
        default: "127.0.0.1:8080",
        doc: "",
    };
    const WAIT: Var = Var {
        name: "CAIRN_TEST_WAIT",
        default: "30s",
        doc: "",
    };

    #[test]
    fn errors_name_the_variable_and_the_value() {
        let settings = Settings::from_pairs(&[ADDR], [("CAIRN_TEST_ADDR", "localhost")]);
        let err = settings.socket_addr(&ADDR).unwrap_err().to_string();
        assert!(
            err.starts_with("CAIRN_TEST_ADDR=\"localhost\": not a socket address"),
            "{err}"
        );
    }

    #[test]
    fn defaults_apply_and_say_so_when_bad() {
        let settings = Settings::from_pairs(&[ADDR, WAIT], []);
        assert_eq!(settings.socket_addr(&ADDR).unwrap().port(), 8080);
        assert_eq!(settings.duration(&WAIT).unwrap(), Duration::from_secs(30));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse_duration("5y")
                .unwrap_err()
                .contains("unknown duration unit")
        );
        assert_eq!(parse_size("64KB").unwrap(), 65_536);
        assert_eq!(parse_size("10mb").unwrap(), 10 << 20);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_size("99999999999TB").unwrap_err(), "too large");
    }

    #[test]
    fn file_values_sit_under_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, "test_addr = \"10.0.0.1:1\"\ntest_wait = \"5m\"\n").unwrap();
        let (path, file) = read_file(&path, &[ADDR, WAIT]).unwrap();
        let env = BTreeMap::from([("CAIRN_TEST_WAIT".to_string(), "1s".to_string())]);
        let settings = Settings::resolve(&[ADDR, WAIT], &env, Some(&(path.clone(), file)));
        assert_eq!(settings.string(&ADDR), "10.0.0.1:1");
        assert_eq!(settings.duration(&WAIT).unwrap(), Duration::from_secs(1));

        std::fs::write(&path, "test_addr = \"nope\"\n").unwrap();
        let loaded = read_file(&path, &[ADDR]).unwrap();
        let settings = Settings::resolve(&[ADDR], &BTreeMap::new(), Some(&loaded));
        let err = settings.socket_addr(&ADDR).unwrap_err().to_string();
        assert!(err.contains("CAIRN_TEST_ADDR=\"nope\" (from "), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, "test_adr = \"10.0.0.1:1\"\n").unwrap();
        let err = read_file(&path, &[ADDR]).unwrap_err().to_string();
        assert!(err.contains("unknown key \"test_adr\""), "{err}");
    }
}
