//! Validation of a parsed config as a whole: routes name providers that exist (each once), `[settings]` numbers
//! are in range, provider tables are usable, and what a mount needs besides (some path leads somewhere).

use super::providers::check_endpoint;
use super::{
    images, ByteSize, Config, ConfigError, ProviderConfig, RouteConfig, WritePolicy, BLOCK_SIZE,
};

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: String, msg: String| Err(ConfigError::new(&self.file, key, msg));
        if self.providers.is_empty() {
            return err(
                "providers".into(),
                "no providers defined; add at least one [providers.NAME] table".into(),
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            match (&route.prefix, &route.pattern) {
                (Some(_), Some(_)) => {
                    return err(key, "give either `prefix` or `pattern`, not both".into())
                }
                (None, None) => return err(key, "missing `prefix` or `pattern`".into()),
                _ => {}
            }
            self.check_route_providers(&key, route)?;
        }
        if let Some(default) = &self.default {
            if default.prefix.is_some() || default.pattern.is_some() {
                return err(
                    "default".into(),
                    "the default route takes no `prefix` or `pattern`".into(),
                );
            }
            self.check_route_providers("default", default)?;
        }
        self.check_ranges()?;
        for (name, provider) in &self.providers {
            self.check_provider(name, provider)?;
        }
        if self.settings.images.workers == 0 || self.settings.images.max_pixels == 0 {
            return err(
                "settings.images".into(),
                "`workers` and `max_pixels` must be at least 1".into(),
            );
        }
        if self.settings.cdn.enabled && self.settings.cdn.domain.is_none() {
            return err(
                "settings.cdn.domain".into(),
                "required when settings.cdn.enabled = true".into(),
            );
        }
        Ok(())
    }

    /// What a mount (and `zmount check`) needs beyond a valid file: some path must lead somewhere. A config of
    /// providers only is fine for `migrate`/`sync`/`url`, which name providers themselves.
    pub fn check_mountable(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() && self.default.is_none() {
            return Err(ConfigError::new(
                &self.file,
                "default",
                "no [[routes]] and no [default]: every path of the mount would be refused; add `[default]` with `provider = \"NAME\"`",
            ));
        }
        Ok(())
    }

    /// Every number of `[settings]` within the range where the feature it tunes works: finite, not negative, below a
    /// ceiling past which it is surely a typo (a `nan` or a `1e300` would otherwise reach a panic or a hang later).
    fn check_ranges(&self) -> Result<(), ConfigError> {
        const DAY: f64 = 86_400.0;
        let s = &self.settings;
        let (t, f, m) = (&s.timeouts, &s.failover, &s.mount);
        // (key, value, smallest allowed, is the smallest itself allowed, largest)
        let seconds = [
            ("settings.timeouts.connect", t.connect, 0.0, false, 3_600.0),
            ("settings.timeouts.read", t.read, 0.0, false, 3_600.0),
            (
                "settings.timeouts.first_byte",
                t.first_byte,
                0.0,
                false,
                3_600.0,
            ),
            ("settings.timeouts.total", t.total, 0.0, false, DAY),
            ("settings.retry.delay", s.retry.delay, 0.0, true, 600.0),
            ("settings.retry.budget", s.retry.budget, 0.0, false, DAY),
            ("settings.failover.cooldown", f.cooldown, 0.0, false, DAY),
            (
                "settings.failover.heal_interval",
                f.heal_interval,
                0.0,
                false,
                DAY,
            ),
            ("settings.mount.attr_ttl", m.attr_ttl, 0.0, true, DAY),
            (
                "settings.mount.negative_ttl",
                m.negative_ttl,
                0.0,
                true,
                DAY,
            ),
            (
                "settings.mount.write_back_delay",
                m.write_back_delay,
                0.0,
                true,
                3_600.0,
            ),
        ];
        for (key, value, min, min_ok, max) in seconds {
            let above = if min_ok { value >= min } else { value > min };
            if !(value.is_finite() && above && value <= max) {
                let low = if min_ok { "at least" } else { "more than" };
                return Err(ConfigError::new(
                    &self.file,
                    key,
                    format!(
                        "must be a number of seconds, {low} {min} and at most {max}; got {value}"
                    ),
                ));
            }
        }
        let counts = [
            ("settings.retry.attempts", s.retry.attempts, 100),
            (
                "settings.failover.failure_threshold",
                f.failure_threshold,
                1_000_000,
            ),
            (
                "settings.failover.primary_read_attempts",
                f.primary_read_attempts,
                100,
            ),
            ("settings.mount.threads", m.threads, 64),
            ("settings.mount.list_page", m.list_page, 1000),
        ];
        for (key, value, max) in counts {
            if value == 0 || value > max {
                return Err(ConfigError::new(
                    &self.file,
                    key,
                    format!("must be from 1 to {max}; got {value}"),
                ));
            }
        }
        let block = BLOCK_SIZE;
        let sizes = [
            // The disk cache holds blocks of the files being read: a few blocks at least.
            ("settings.cache_size", s.cache_size.0, 4 * block, 1 << 50),
            // Read-ahead hands blocks through the memory cache: it needs room for more than one.
            (
                "settings.mount.memory_cache_size",
                m.memory_cache_size.0,
                2 * block,
                64 << 30,
            ),
            (
                "settings.mount.read_ahead",
                m.read_ahead.0,
                block,
                m.memory_cache_size.0.max(block),
            ),
        ];
        for (key, value, min, max) in sizes {
            if value < min || value > max {
                return Err(ConfigError::new(
                    &self.file,
                    key,
                    format!(
                        "must be from {} to {}; got {}",
                        ByteSize(min),
                        ByteSize(max),
                        ByteSize(value)
                    ),
                ));
            }
        }
        for (key, mode) in [
            ("settings.mount.file_mode", m.file_mode),
            ("settings.mount.dir_mode", m.dir_mode),
        ] {
            if mode > 0o7777 {
                return Err(ConfigError::new(
                    &self.file,
                    key,
                    format!("must be permission bits, at most 0o7777 (4095); got {mode} (write it as 0o644)"),
                ));
            }
        }
        if s.cache_dir.is_file() {
            return Err(ConfigError::new(
                &self.file,
                "settings.cache_dir",
                format!(
                    "{} is a file; it must be a folder (it is created if missing)",
                    s.cache_dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// A provider's required strings are not empty and its endpoint is a URL zmount can talk to.
    fn check_provider(&self, name: &str, provider: &ProviderConfig) -> Result<(), ConfigError> {
        let key = |field: &str| format!("providers.{name}.{field}");
        let (required, endpoint): (Vec<(&str, &str)>, Option<&str>) = match provider {
            ProviderConfig::S3(c) | ProviderConfig::Wasabi(c) => (
                vec![("bucket", &c.bucket), ("region", &c.region)],
                c.endpoint.as_deref(),
            ),
            ProviderConfig::Gcs(c) => (vec![("bucket", &c.bucket)], None),
            ProviderConfig::Azure(c) => (vec![("container", &c.container)], c.endpoint.as_deref()),
            ProviderConfig::Local(_) => (vec![], None),
        };
        for (field, value) in required {
            if value.trim().is_empty() {
                return Err(ConfigError::new(
                    &self.file,
                    key(field),
                    "must not be empty",
                ));
            }
        }
        if let ProviderConfig::Local(c) = provider {
            if c.path.as_os_str().is_empty() || c.path.is_file() {
                return Err(ConfigError::new(
                    &self.file,
                    key("path"),
                    format!(
                        "must be a folder (created if missing); {} is not",
                        c.path.display()
                    ),
                ));
            }
        }
        if let Some(endpoint) = endpoint {
            check_endpoint(endpoint)
                .map_err(|m| ConfigError::new(&self.file, key("endpoint"), m))?;
        }
        Ok(())
    }

    fn check_route_providers(&self, key: &str, route: &RouteConfig) -> Result<(), ConfigError> {
        let defined = self
            .providers
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let named = std::iter::once(("provider".to_string(), &route.provider)).chain(
            route
                .fallback
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("fallback[{i}]"), f)),
        );
        for (field, name) in named {
            if !self.providers.contains_key(name) {
                return Err(ConfigError::new(
                    &self.file,
                    format!("{key}.{field}"),
                    format!("no provider named `{name}`; defined providers: {defined}"),
                ));
            }
        }
        let mut seen = vec![&route.provider];
        for (i, name) in route.fallback.iter().enumerate() {
            if seen.contains(&name) {
                return Err(ConfigError::new(
                    &self.file,
                    format!("{key}.fallback[{i}]"),
                    format!("`{name}` is already named earlier in this route; each provider may appear once"),
                ));
            }
            seen.push(name);
        }
        self.check_route_attributes(key, route)?;
        images::check_route_images(
            route.transforms.as_ref(),
            &route.variants,
            route.variants_under.as_deref(),
        )
        .map_err(|(field, m)| ConfigError::new(&self.file, format!("{key}.{field}"), m))?;
        if route.write == WritePolicy::Failover && route.fallback.is_empty() {
            return Err(ConfigError::new(
                &self.file,
                format!("{key}.write"),
                "`failover` needs at least one provider in `fallback`".to_string(),
            ));
        }
        Ok(())
    }

    /// A route's default `metadata` and `tags` must be what every upload accepts, so new files never fail late.
    fn check_route_attributes(&self, key: &str, route: &RouteConfig) -> Result<(), ConfigError> {
        use crate::meta::{
            check_metadata_value, check_tag, normalize_metadata_key, TAGS_MIRROR_KEY,
        };
        for (k, v) in &route.metadata {
            let checked = normalize_metadata_key(k).and_then(|lower| {
                let reserved = crate::meta::posix::KEYS.contains(&lower.as_str())
                    || crate::meta::MARKER_KEYS.contains(&lower.as_str())
                    || lower == TAGS_MIRROR_KEY;
                match reserved {
                    true => Err(format!("`{lower}` is kept by zmount itself")),
                    false => check_metadata_value(&lower, v),
                }
            });
            checked.map_err(|m| ConfigError::new(&self.file, format!("{key}.metadata.{k}"), m))?;
        }
        for (k, v) in &route.tags {
            check_tag(k, v)
                .map_err(|m| ConfigError::new(&self.file, format!("{key}.tags.{k}"), m))?;
        }
        let primary_kind = self.providers.get(&route.provider).map(|p| p.kind());
        if !route.tags.is_empty() && primary_kind == Some("gcs") {
            return Err(ConfigError::new(
                &self.file,
                format!("{key}.tags"),
                format!("provider `{}` (gcs) has no object tags", route.provider),
            ));
        }
        Ok(())
    }
}
