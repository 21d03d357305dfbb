//! All settings in one typed struct, loaded once: built-in defaults (`config/default.toml`), then
//! an optional file named by `IMGREC_CONFIG`, then `IMGREC__SECTION__KEY` environment variables.

use std::path::Path;

use anyhow::Context;
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use crate::classifier::{ImageLimits, InferenceSettings};

const DEFAULTS: &str = include_str!("../../../config/default.toml");

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub inference: InferenceSettings,
    pub image_limits: ImageLimits,
}

impl Settings {
    /// Loads from the process environment.
    pub fn load() -> anyhow::Result<Self> {
        let file = std::env::var_os("IMGREC_CONFIG");
        Self::load_from(
            file.as_deref().map(Path::new),
            Environment::with_prefix("IMGREC"),
        )
    }

    fn load_from(file: Option<&Path>, env: Environment) -> anyhow::Result<Self> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).required(true));
        }
        builder
            .add_source(env.prefix_separator("__").separator("__").try_parsing(true))
            .build()
            .and_then(Config::try_deserialize)
            .context("invalid configuration")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::with_prefix("IMGREC").source(Some(map))
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.inference.threads, 1);
        assert_eq!(
            s.inference.model_dir,
            Path::new("models/efficientnet-lite0")
        );
        assert_eq!(s.image_limits, ImageLimits::default());
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = Settings::load_from(None, env(&[("IMGREC__INFERENCE__THREADS", "3")])).unwrap();
        assert_eq!(s.inference.threads, 3);
    }

    #[test]
    fn file_overrides_defaults_and_typos_are_errors() {
        let dir = std::env::temp_dir().join(format!("imgrec-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[image_limits]\nmax_side = 100\n").unwrap();
        assert_eq!(
            Settings::load_from(Some(&good), env(&[]))
                .unwrap()
                .image_limits
                .max_side,
            100
        );
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[inference]\nthread = 2\n").unwrap();
        assert!(Settings::load_from(Some(&bad), env(&[])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
