//! Optional API keys (`web.api_keys`, `web.api_keys_file`): when any is configured, an upload must
//! carry one (`Authorization: Bearer <key>` or `X-Api-Key: <key>`), and each key's uploads come at
//! most at its rate (a token bucket). Keys are known by their SHA-256 only, so neither the config
//! nor this process's memory holds one; a lookup by hash leaks nothing of a key through its timing.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use imgrec_domain::config::{ApiKey, WebSettings};
use sha2::{Digest, Sha256};

use crate::error::UploadError;

pub struct ApiKeys {
    /// By the key's SHA-256 (lowercase hex): its name and its bucket.
    keys: HashMap<String, (String, DefaultDirectRateLimiter)>,
}

impl ApiKeys {
    /// The configured keys, and those of `parameter` (the text of `web.api_keys_parameter`);
    /// `None` when there are none (uploads need no key).
    pub fn load(web: &WebSettings, parameter: Option<&str>) -> anyhow::Result<Option<Self>> {
        let mut all = web.api_keys.clone();
        if let Some(file) = &web.api_keys_file {
            all.extend(read_file(file)?);
        }
        if let Some(text) = parameter {
            let name = web.api_keys_parameter.as_deref().unwrap_or_default();
            all.extend(parse(text, &format!("SSM parameter {name}"))?);
        }
        if all.is_empty() {
            return Ok(None);
        }
        let mut keys = HashMap::new();
        for key in all {
            let hash = key.sha256.to_ascii_lowercase();
            ensure!(
                hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                "API key {:?}: sha256 must be 64 hex digits",
                key.name
            );
            ensure!(
                key.rate_per_s.is_finite() && key.rate_per_s > 0.0,
                "API key {:?}: rate_per_s must be positive",
                key.name
            );
            let burst = NonZeroU32::new(key.burst)
                .with_context(|| format!("API key {:?}: burst must be at least 1", key.name))?;
            let period = Duration::from_secs_f64(1.0 / key.rate_per_s);
            let quota = Quota::with_period(period)
                .with_context(|| format!("API key {:?}: rate_per_s is too high", key.name))?
                .allow_burst(burst);
            if keys
                .insert(hash, (key.name.clone(), RateLimiter::direct(quota)))
                .is_some()
            {
                bail!("API key {:?} is configured twice", key.name);
            }
        }
        Ok(Some(Self { keys }))
    }

    /// The name of the key presented, if it is one of these and within its rate.
    pub fn check(&self, presented: Option<&str>) -> Result<String, UploadError> {
        let key = presented.filter(|k| !k.is_empty()).ok_or(UploadError::Unauthorized)?;
        let hash: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (name, bucket) = self.keys.get(&hash).ok_or(UploadError::Unauthorized)?;
        bucket.check().map_err(|not_until| {
            tracing::debug!(key = %name, "rate limited");
            UploadError::RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
        })?;
        Ok(name.clone())
    }
}

fn read_file(path: &Path) -> anyhow::Result<Vec<ApiKey>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// `name sha256-hex rate_per_s burst` a line; blank lines and `#` comments skipped. `origin` names
/// where the text came from in errors.
fn parse(text: &str, origin: &str) -> anyhow::Result<Vec<ApiKey>> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{origin}:{}", i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, sha256, rate, burst] = fields[..] else {
            bail!("{}: want `name sha256-hex rate_per_s burst`", at());
        };
        keys.push(ApiKey {
            name: name.to_owned(),
            sha256: sha256.to_owned(),
            rate_per_s: rate.parse().with_context(|| format!("{}: rate_per_s", at()))?,
            burst: burst.parse().with_context(|| format!("{}: burst", at()))?,
        });
    }
    Ok(keys)
}

/// The key an upload presents: `Authorization: Bearer <key>`, else `X-Api-Key`.
pub fn presented(authorization: Option<&str>, x_api_key: Option<&str>) -> Option<String> {
    let bearer = authorization.and_then(|a| {
        let (scheme, token) = a.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
    });
    bearer.or_else(|| x_api_key.map(|k| k.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn web(keys: Vec<ApiKey>) -> WebSettings {
        let mut web = imgrec_runtime::settings::Settings::defaults().unwrap().web;
        web.api_keys = keys;
        web
    }

    fn key(name: &str, secret: &str, rate_per_s: f64, burst: u32) -> ApiKey {
        ApiKey {
            name: name.into(),
            sha256: sha(secret),
            rate_per_s,
            burst,
        }
    }

    #[test]
    fn no_keys_configured_means_none_needed() {
        assert!(ApiKeys::load(&web(Vec::new()), None).unwrap().is_none());
    }

    #[test]
    fn a_known_key_passes_until_its_bucket_is_empty_an_unknown_or_missing_one_never() {
        let keys = ApiKeys::load(
            &web(vec![key("a", "secret-a", 0.5, 2), key("b", "secret-b", 100.0, 1)]),
            None,
        )
        .unwrap()
        .unwrap();
        assert!(keys.check(Some("secret-a")).is_ok());
        assert!(keys.check(Some("secret-a")).is_ok());
        match keys.check(Some("secret-a")) {
            Err(UploadError::RateLimited { retry_after }) => {
                assert!(
                    retry_after > Duration::from_secs(1) && retry_after <= Duration::from_secs(2),
                    "{retry_after:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(keys.check(Some("secret-b")).is_ok(), "each key has its own bucket");
        for bad in [
            None,
            Some(""),
            Some("secret-c"),
            Some("SECRET-A"),
            Some(sha("secret-a").as_str()),
        ] {
            assert!(matches!(keys.check(bad), Err(UploadError::Unauthorized)), "{bad:?}");
        }
    }

    #[test]
    fn bad_key_settings_are_refused_at_start() {
        for bad in [
            ApiKey {
                sha256: "abc".into(),
                ..key("a", "x", 1.0, 1)
            },
            key("a", "x", 0.0, 1),
            key("a", "x", f64::NAN, 1),
            key("a", "x", 1.0, 0),
        ] {
            assert!(ApiKeys::load(&web(vec![bad.clone()]), None).is_err(), "{bad:?}");
        }
        assert!(ApiKeys::load(&web(vec![key("a", "x", 1.0, 1), key("b", "x", 1.0, 1)]), None).is_err());
    }

    #[test]
    fn keys_come_from_a_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(
            &file,
            format!("# clients\n\nbatch {} 10 20 # the nightly job\n", sha("s3cret")),
        )
        .unwrap();
        let mut settings = web(Vec::new());
        settings.api_keys_file = Some(file.clone());
        let keys = ApiKeys::load(&settings, None).unwrap().unwrap();
        assert!(keys.check(Some("s3cret")).is_ok());
        std::fs::write(&file, "batch abc 10\n").unwrap();
        let e = ApiKeys::load(&settings, None).err().unwrap().to_string();
        assert!(e.contains("keys:1"), "{e}");
    }

    #[test]
    fn keys_come_from_an_ssm_parameter_too() {
        let mut settings = web(Vec::new());
        settings.api_keys_parameter = Some("/imgrec/api-keys".into());
        let text = format!("nightly {} 10 20\n", sha("from-ssm"));
        let keys = ApiKeys::load(&settings, Some(&text)).unwrap().unwrap();
        assert_eq!(keys.check(Some("from-ssm")).unwrap(), "nightly");
        let e = ApiKeys::load(&settings, Some("nightly zz")).err().unwrap().to_string();
        assert!(e.contains("SSM parameter /imgrec/api-keys:1"), "{e}");
    }

    #[test]
    fn the_key_is_read_from_a_bearer_token_or_x_api_key() {
        assert_eq!(presented(Some("Bearer abc"), None).as_deref(), Some("abc"));
        assert_eq!(presented(Some("bearer  abc "), Some("x")).as_deref(), Some("abc"));
        assert_eq!(presented(Some("Basic abc"), Some("x")).as_deref(), Some("x"));
        assert_eq!(presented(None, None), None);
    }
}
