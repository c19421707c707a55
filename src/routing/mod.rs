//! Path → route: which provider (and fallbacks) serves a path in the mounted tree.
//!
//! Precedence is one simple rule: `[[routes]]` entries are tried in file order and the first that matches wins;
//! a path no rule matches goes to `[default]` (and is refused when there is none). A `prefix` rule matches the path
//! itself and everything below it, on whole components (`docs` matches `docs/a.pdf`, not `docs2/a.pdf`). A `pattern`
//! rule is a glob over the whole path where `|` separates alternatives and `*` also crosses `/`, so `*.jpg` matches
//! `photos/2024/cat.jpg`. Routes never rename: the object key is the provider's prefix plus the path, the same on
//! every provider (see [`crate::providers::Provider::key_for`]).

use crate::config::{ByteSize, Config, ConfigError, RouteConfig, WritePolicy};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::fmt;

/// Where a path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub provider: String,
    pub fallback: Vec<String>,
    pub write: WritePolicy,
    pub max_file_size: Option<ByteSize>,
    pub write_back: bool,
    /// Metadata and tags new files get.
    pub metadata: std::collections::BTreeMap<String, String>,
    pub tags: std::collections::BTreeMap<String, String>,
    /// Image transforms and variants (see `src/images`); `None` when the route has neither.
    pub images: Option<crate::config::RouteImages>,
}

impl Route {
    fn from_config(c: &RouteConfig) -> Self {
        Route {
            provider: c.provider.clone(),
            fallback: c.fallback.clone(),
            write: c.write,
            max_file_size: c.max_file_size,
            write_back: c.write_back,
            metadata: c
                .metadata
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            tags: c.tags.clone(),
            images: crate::config::RouteImages::of(c),
        }
    }

    /// Primary first, then fallbacks in order.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.provider.as_str()).chain(self.fallback.iter().map(String::as_str))
    }
}

enum Matcher {
    Prefix(String),
    Glob(GlobSet),
}

struct Rule {
    /// How the rule reads in the config, e.g. `routes[1] (pattern = "*.jpg|*.png")`.
    label: String,
    matcher: Matcher,
    route: Route,
}

/// The result of routing one path.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    /// Which rule matched, as written in the config (`default` for the default route).
    pub rule: &'a str,
    pub route: &'a Route,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// `..` would escape the mount.
    ParentComponent,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::ParentComponent => f.write_str("paths may not contain `..`"),
        }
    }
}

/// Canonical form of a mount path: no leading/trailing `/`, no empty or `.` components. The root is "".
pub fn normalize(path: &str) -> Result<String, PathError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::ParentComponent),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

pub struct Router {
    rules: Vec<Rule>,
    default: Option<(String, Route)>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.label))
            .finish()
    }
}

impl Router {
    pub fn new(config: &Config) -> Result<Router, ConfigError> {
        let mut rules: Vec<Rule> = Vec::new();
        let mut catch_all: Option<String> = None;
        for (i, rc) in config.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if let Some(earlier) = &catch_all {
                return Err(ConfigError::new(
                    &config.file,
                    key,
                    format!("can never match: {earlier} matches every path; move the catch-all last or use [default]"),
                ));
            }
            let (label, matcher) = if let Some(prefix) = &rc.prefix {
                let clean = normalize(prefix).map_err(|e| {
                    ConfigError::new(&config.file, format!("{key}.prefix"), e.to_string())
                })?;
                (
                    format!("{key} (prefix = {prefix:?})"),
                    Matcher::Prefix(clean),
                )
            } else {
                let pattern = rc.pattern.as_deref().unwrap_or_default();
                let set = build_globs(pattern)
                    .map_err(|m| ConfigError::new(&config.file, format!("{key}.pattern"), m))?;
                if pattern.split('|').any(|alt| alt.chars().all(|c| c == '*')) {
                    catch_all = Some(format!("{key} (pattern = {pattern:?})"));
                }
                (format!("{key} (pattern = {pattern:?})"), Matcher::Glob(set))
            };
            rules.push(Rule {
                label,
                matcher,
                route: Route::from_config(rc),
            });
        }
        let default = config
            .default
            .as_ref()
            .map(|d| ("default".to_string(), Route::from_config(d)));
        Ok(Router { rules, default })
    }

    /// Routes a normalized path (see [`normalize`]).
    pub fn resolve(&self, path: &str) -> Option<Resolved<'_>> {
        self.rules
            .iter()
            .find(|rule| rule.matches(path))
            .map(|rule| Resolved {
                rule: &rule.label,
                route: &rule.route,
            })
            .or_else(|| {
                self.default
                    .as_ref()
                    .map(|(label, route)| Resolved { rule: label, route })
            })
    }

    /// Providers (primaries and fallbacks) that may hold entries at or below directory `dir`, each once, in rule
    /// order. A listing of `dir` asks each of these and keeps an entry only from the provider its rule names.
    pub fn providers_under(&self, dir: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for route in self.routes_under(dir) {
            for name in route.providers() {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }
}

impl Router {
    /// Routes that may send paths below directory `dir` somewhere, in rule order. First match wins, so a prefix
    /// rule holding `dir` itself takes every path below it: the rules after it (the default included) can never
    /// send anything there, and their providers are neither asked nor needed for `dir`'s listings.
    pub fn routes_under(&self, dir: &str) -> Vec<&Route> {
        let mut out = Vec::new();
        for rule in &self.rules {
            match &rule.matcher {
                Matcher::Prefix(p) if is_within(dir, p) => {
                    out.push(&rule.route);
                    return out;
                }
                Matcher::Prefix(p) if !is_within(p, dir) => continue,
                _ => out.push(&rule.route),
            }
        }
        out.extend(self.default.as_ref().map(|(_, r)| r));
        out
    }

    /// For a listing of `dir` in which the providers `failed` did not answer: the first failed provider whose
    /// entries no answering fallback can stand in for (a route under `dir` has it as primary and every fallback
    /// of that route failed too). Such a listing would silently miss files, so it must fail instead.
    pub fn uncovered<'a>(&'a self, dir: &str, failed: &[&str]) -> Option<&'a str> {
        self.routes_under(dir)
            .into_iter()
            .find(|route| {
                failed.contains(&route.provider.as_str())
                    && route.fallback.iter().all(|f| failed.contains(&f.as_str()))
            })
            .map(|route| route.provider.as_str())
    }
}

impl Rule {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Prefix(prefix) => is_within(path, prefix),
            Matcher::Glob(set) => set.is_match(path),
        }
    }
}

/// True when `path` is `dir` or below it ("" is the root, which holds everything).
pub fn is_within(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

fn build_globs(pattern: &str) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for alt in pattern.split('|') {
        let alt = alt.trim();
        if alt.is_empty() {
            return Err(format!(
                "empty alternative in pattern {pattern:?}; expected globs separated by `|`"
            ));
        }
        let glob = GlobBuilder::new(alt.trim_start_matches('/'))
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("invalid glob {alt:?}: {}", e.kind()))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| format!("invalid pattern {pattern:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[providers.s3]
kind = "local"
path = "s3"
[providers.gcs]
kind = "local"
path = "gcs"
[providers.local]
kind = "local"
path = "local"

[[routes]]
prefix = "temp_files"
provider = "local"
[[routes]]
pattern = "*.jpg|*.png|*.gif"
provider = "gcs"
fallback = ["s3"]
[[routes]]
prefix = "user_uploads"
provider = "s3"

[default]
provider = "s3"
"#;

    fn router() -> Router {
        Router::new(&Config::parse(CONFIG, Path::new("mount.toml")).unwrap()).unwrap()
    }

    #[test]
    fn first_matching_rule_wins() {
        let r = router();
        assert_eq!(
            r.resolve("temp_files/a.jpg").unwrap().route.provider,
            "local"
        );
        assert_eq!(
            r.resolve("user_uploads/deep/x.png").unwrap().route.provider,
            "gcs"
        );
        assert_eq!(
            r.resolve("user_uploads/x.txt").unwrap().route.provider,
            "s3"
        );
        assert_eq!(r.resolve("temp_files2/x.txt").unwrap().rule, "default");
        assert_eq!(r.resolve("temp_files").unwrap().route.provider, "local");
    }

    #[test]
    fn listing_a_directory_asks_every_provider_that_can_route_into_it() {
        let r = router();
        // `temp_files` is the first rule: nothing below it can go anywhere else, so nobody else is asked.
        assert_eq!(r.providers_under("temp_files"), vec!["local"]);
        assert_eq!(r.providers_under("temp_files/deep"), vec!["local"]);
        assert_eq!(r.providers_under(""), vec!["local", "gcs", "s3"]);
        assert_eq!(r.providers_under("other"), vec!["gcs", "s3"]);
    }

    #[test]
    fn a_listing_may_miss_a_provider_only_when_a_fallback_answered_for_it() {
        let r = router();
        assert_eq!(r.uncovered("other", &["gcs"]), None, "s3 stands in for gcs");
        assert_eq!(r.uncovered("other", &["gcs", "s3"]), Some("gcs"));
        assert_eq!(
            r.uncovered("user_uploads", &["s3"]),
            Some("s3"),
            "s3 has no fallback"
        );
        assert_eq!(r.uncovered("temp_files", &[]), None);
        assert_eq!(
            r.uncovered("temp_files", &["gcs", "s3"]),
            None,
            "gcs and s3 can hold nothing below temp_files"
        );
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize("/a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(normalize("/").unwrap(), "");
        assert_eq!(normalize("a/../b"), Err(PathError::ParentComponent));
    }

    #[test]
    fn catch_all_before_other_rules_is_an_error() {
        let text = CONFIG.replace("prefix = \"temp_files\"", "pattern = \"*\"");
        let e = Router::new(&Config::parse(&text, Path::new("mount.toml")).unwrap()).unwrap_err();
        assert_eq!(e.key, "routes[1]");
        assert!(e.message.contains("can never match"), "{e}");
    }
}
