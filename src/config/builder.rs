//! A mount.toml built from typed parts, for programs and tests that set a mount up in code. What it builds is
//! TOML text, parsed and checked exactly as a file is ([`Config::parse`]), so a built config cannot hold anything
//! a written one could not.

use super::{Config, ConfigError};
use std::path::Path;
use toml::{Table, Value};

/// A mount.toml under construction: `[settings]`, `[providers.*]`, `[[routes]]` and `[default]`.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    settings: Table,
    providers: Table,
    routes: Vec<Table>,
    default: Option<Table>,
}

/// One `[[routes]]` entry or the `[default]` table.
#[derive(Debug, Clone)]
pub struct RouteBuilder(Table);

impl ConfigBuilder {
    /// An empty config whose cache lives in `cache_dir`.
    pub fn new(cache_dir: &Path) -> Self {
        ConfigBuilder::default().setting("cache_dir", cache_dir.display().to_string())
    }

    /// Sets `[settings]` key `key`; a dotted key reaches a sub-table (`"failover.heal_interval"`,
    /// `"mount.write_back_delay"`).
    pub fn setting(mut self, key: &str, value: impl Into<Value>) -> Self {
        let mut table = &mut self.settings;
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("split yields at least one part");
        for part in parts {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            table = entry
                .as_table_mut()
                .expect("a settings key used as a table and as a value");
        }
        table.insert(last.to_string(), value.into());
        self
    }

    /// `[settings.retry]`: `attempts` per request (the first one included), `delay` seconds before the first retry.
    pub fn retry(self, attempts: u32, delay: f64) -> Self {
        self.setting("retry.attempts", i64::from(attempts))
            .setting("retry.delay", delay)
    }

    /// `[providers.NAME]` of `kind`, with the other keys of its table.
    pub fn provider<'a>(
        mut self,
        name: &str,
        kind: &str,
        keys: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Self {
        let mut table = Table::new();
        table.insert("kind".into(), kind.into());
        table.extend(keys.into_iter().map(|(k, v)| (k.to_string(), v)));
        self.providers.insert(name.to_string(), Value::Table(table));
        self
    }

    /// A local folder provider.
    pub fn local(self, name: &str, folder: &Path) -> Self {
        let path = folder.display().to_string();
        self.provider(name, "local", [("path", path.into())])
    }

    /// A `[[routes]]` entry, after those added before it (the first that matches a path wins).
    pub fn route(mut self, route: RouteBuilder) -> Self {
        self.routes.push(route.0);
        self
    }

    /// The `[default]` route.
    pub fn default_route(mut self, route: RouteBuilder) -> Self {
        self.default = Some(route.0);
        self
    }

    /// The config as mount.toml text.
    pub fn text(&self) -> String {
        let mut file = Table::new();
        file.insert("settings".into(), Value::Table(self.settings.clone()));
        file.insert("providers".into(), Value::Table(self.providers.clone()));
        if !self.routes.is_empty() {
            let routes = self.routes.iter().cloned().map(Value::Table).collect();
            file.insert("routes".into(), Value::Array(routes));
        }
        if let Some(default) = &self.default {
            file.insert("default".into(), Value::Table(default.clone()));
        }
        toml::to_string(&file).expect("a table of strings, numbers and booleans serializes")
    }

    /// The config, parsed and checked as if read from `file` (which need not exist; relative paths resolve
    /// against its folder).
    pub fn build(&self, file: &Path) -> Result<Config, ConfigError> {
        Config::parse(&self.text(), file)
    }
}

impl RouteBuilder {
    /// The `[default]` route's table: every path no rule matches goes to `provider`.
    pub fn to(provider: &str) -> Self {
        let mut table = Table::new();
        table.insert("provider".into(), provider.into());
        RouteBuilder(table)
    }

    /// A route for `prefix` and everything below it.
    pub fn prefix(prefix: &str, provider: &str) -> Self {
        Self::to(provider).set("prefix", prefix)
    }

    /// A route for paths matching the glob `pattern`.
    pub fn pattern(pattern: &str, provider: &str) -> Self {
        Self::to(provider).set("pattern", pattern)
    }

    /// Fallback providers, in order.
    pub fn fallback(self, providers: &[&str]) -> Self {
        let list: Vec<Value> = providers.iter().map(|p| Value::from(*p)).collect();
        self.set("fallback", Value::Array(list))
    }

    /// `write = "failover"`: writes go to a fallback while the primary is down.
    pub fn write_failover(self) -> Self {
        self.set("write", "failover")
    }

    /// `write_back = true`: `close` returns once the data is staged; the upload follows.
    pub fn write_back(self) -> Self {
        self.set("write_back", true)
    }

    /// Any other key of the route's table.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_config_parses_like_the_file_it_stands_for() {
        let dir = tempfile::tempdir().unwrap();
        let config = ConfigBuilder::new(&dir.path().join("cache"))
            .setting("mount.write_back_delay", 0.5)
            .retry(2, 0.25)
            .local("a", &dir.path().join("a"))
            .local("b", &dir.path().join("b"))
            .route(
                RouteBuilder::prefix("docs", "a")
                    .fallback(&["b"])
                    .write_failover(),
            )
            .route(RouteBuilder::pattern("*.tmp", "b").write_back())
            .default_route(RouteBuilder::to("a"))
            .build(&dir.path().join("mount.toml"))
            .unwrap();
        assert_eq!(config.settings.mount.write_back_delay, 0.5);
        assert_eq!(config.settings.retry.attempts, 2);
        assert_eq!(config.settings.retry.delay, 0.25);
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[0].fallback, ["b"]);
        assert_eq!(config.routes[0].write, super::super::WritePolicy::Failover);
        assert!(config.routes[1].write_back);
        assert_eq!(config.default.as_ref().unwrap().provider, "a");
    }

    #[test]
    fn a_built_config_is_checked_like_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ConfigBuilder::new(dir.path())
            .local("a", dir.path())
            .default_route(RouteBuilder::to("nowhere"))
            .build(&dir.path().join("mount.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
    }
}
