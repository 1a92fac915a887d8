//! Loading `ServerConfig` from TOML, with environment overrides.
//!
//! Any variable `LAUSCHA__SECTION__FIELD=value` overrides `[section] field`; array tables
//! take an index (`LAUSCHA__STORAGE__0__SITE=site-b`). Values are parsed as TOML where
//! they can be (numbers, booleans, arrays) and taken as strings otherwise. A variable for a
//! section the file does not have is ignored: one environment can serve processes that run
//! different roles.

use std::path::Path;

use anyhow::{Context, bail};
use lauscha_core::config::ServerConfig;

/// Reads, overrides and validates a config file.
pub fn load(path: &Path) -> anyhow::Result<ServerConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    let mut value: toml::Value = toml::from_str(&text)
        .with_context(|| format!("parse config file {} as TOML", path.display()))?;
    apply_env_overrides(&mut value, std::env::vars())?;
    let config: ServerConfig = value
        .try_into()
        .with_context(|| format!("config file {}", path.display()))?;
    config
        .validate()
        .with_context(|| format!("config file {}", path.display()))?;
    Ok(config)
}

/// Applies the `LAUSCHA__<SECTION>__...` variables to one section built in code (the
/// in-process `lauscha dev`), so that overrides act the same with and without
/// `--cluster`.
pub fn override_section<T>(section: &str, config: T) -> anyhow::Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut table = toml::Table::new();
    table.insert(
        section.to_string(),
        toml::Value::try_from(&config).context("serialise a built-in config")?,
    );
    let mut value = toml::Value::Table(table);
    apply_env_overrides(&mut value, std::env::vars())?;
    let toml::Value::Table(mut table) = value else {
        bail!("config is not a table");
    };
    let section_value = table.remove(section).context("section vanished")?;
    section_value
        .try_into()
        .with_context(|| format!("[{section}] with LAUSCHA__ overrides"))
}

/// Applies `LAUSCHA__...` variables to a parsed config.
pub fn apply_env_overrides(
    value: &mut toml::Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, raw) in vars {
        let Some(path) = name.strip_prefix("LAUSCHA__") else {
            continue;
        };
        let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if segments.iter().any(String::is_empty) {
            bail!("environment variable {name}: empty path segment");
        }
        // One set of variables serves every process of a host: a variable for a section
        // this file does not have (a gateway setting in a metadata node's file, say) is
        // not meant for it.
        match value.get(&segments[0]) {
            None => continue,
            Some(toml::Value::Array(items)) if items.is_empty() => continue,
            Some(_) => {}
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let mut cursor = &mut *value;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            cursor = match cursor {
                toml::Value::Table(table) => {
                    if last {
                        table.insert(segment.clone(), parsed.clone());
                        break;
                    }
                    table
                        .entry(segment.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                }
                toml::Value::Array(items) => {
                    let idx: usize = segment.parse().with_context(|| {
                        format!("environment variable {name}: {segment:?} is not an array index")
                    })?;
                    let item = items.get_mut(idx).with_context(|| {
                        format!("environment variable {name}: no element {idx} in the config")
                    })?;
                    if last {
                        *item = parsed.clone();
                        break;
                    }
                    item
                }
                _ => bail!("environment variable {name}: {segment:?} is not a table"),
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/single-host.toml");

    #[test]
    fn the_shipped_example_parses_and_validates() {
        let config: ServerConfig = toml::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.storage.len(), 2);
    }

    #[test]
    fn every_shipped_example_parses_and_validates() {
        for (name, text) in [
            ("metadata.toml", include_str!("../../deploy/metadata.toml")),
            ("storage.toml", include_str!("../../deploy/storage.toml")),
            ("gateway.toml", include_str!("../../deploy/gateway.toml")),
            (
                "voter-1",
                include_str!("../../deploy/three-voters/voter-1-site-a.toml"),
            ),
            (
                "voter-2",
                include_str!("../../deploy/three-voters/voter-2-site-b.toml"),
            ),
            (
                "voter-3",
                include_str!("../../deploy/three-voters/voter-3-witness.toml"),
            ),
            (
                "3v gateway",
                include_str!("../../deploy/three-voters/gateway.toml"),
            ),
        ] {
            let config: ServerConfig =
                toml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn env_overrides_reach_tables_and_arrays() {
        let mut value: toml::Value = toml::from_str(EXAMPLE).unwrap();
        apply_env_overrides(
            &mut value,
            [
                (
                    "LAUSCHA__GATEWAY__REGION".to_string(),
                    "eu-central-1".to_string(),
                ),
                (
                    "LAUSCHA__STORAGE__1__SITE".to_string(),
                    "site-z".to_string(),
                ),
                (
                    "LAUSCHA__GATEWAY__MAX_OBJECT_BYTES".to_string(),
                    "1024".to_string(),
                ),
                ("UNRELATED".to_string(), "x".to_string()),
                (
                    "LAUSCHA__GATEWAY__MAINTENANCE__GC_GRACE_S".to_string(),
                    "5".to_string(),
                ),
            ],
        )
        .unwrap();
        let config: ServerConfig = value.try_into().unwrap();
        let gateway = config.gateway.unwrap();
        assert_eq!(gateway.region, "eu-central-1");
        assert_eq!(gateway.max_object_bytes, 1024);
        assert_eq!(gateway.maintenance.gc_grace_s, 5);
        assert_eq!(config.storage[1].site, "site-z");
    }

    #[test]
    fn overrides_for_sections_the_file_lacks_are_ignored() {
        let mut value: toml::Value =
            toml::from_str(include_str!("../../deploy/metadata.toml")).unwrap();
        apply_env_overrides(
            &mut value,
            [
                (
                    "LAUSCHA__GATEWAY__REGION".to_string(),
                    "eu-central-1".to_string(),
                ),
                (
                    "LAUSCHA__STORAGE__0__SCRUB_INTERVAL_S".to_string(),
                    "1".to_string(),
                ),
            ],
        )
        .unwrap();
        // Written out by a program, the file may say `storage = []`.
        value
            .as_table_mut()
            .unwrap()
            .insert("storage".into(), toml::Value::Array(Vec::new()));
        apply_env_overrides(
            &mut value,
            [(
                "LAUSCHA__STORAGE__0__SCRUB_INTERVAL_S".to_string(),
                "1".to_string(),
            )],
        )
        .unwrap();
        let config: ServerConfig = value.try_into().unwrap();
        assert!(config.gateway.is_none());
        assert!(config.storage.is_empty());
    }

    #[test]
    fn a_source_ip_is_an_ip_address() {
        let with = |value: &str| {
            let text = include_str!("../../deploy/storage.toml")
                .replace("[[storage]]", &format!("[[storage]]\nsource_ip = {value}"));
            toml::from_str::<ServerConfig>(&text)
        };
        let config = with("\"10.1.0.21\"").unwrap();
        assert_eq!(
            config.storage[0].source_ip,
            Some("10.1.0.21".parse().unwrap())
        );
        let err = with("\"10.1.0.21:7203\"").unwrap_err();
        assert!(err.to_string().contains("source_ip"), "{err}");
    }

    #[test]
    fn bad_overrides_say_what_is_wrong() {
        let mut value: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let err = apply_env_overrides(
            &mut value,
            [("LAUSCHA__STORAGE__7__SITE".to_string(), "x".to_string())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("no element 7"), "{err}");
    }
}
