//! User-Agent parsing by the uap-core rules, and the device type.

use std::path::Path;
use std::sync::Arc;

use cairn_enricher::{EnrichError, FactSet};
use serde::Serialize;

use crate::cache::Cache;

/// The uap-core rules Cairn ships (uap-core 0.18, Apache-2.0).
const BUNDLED_REGEXES: &str = include_str!("../data/regexes.yaml");

/// What a User-Agent says about the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub browser: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_version: Option<String>,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// desktop, mobile, tablet, tv, bot or other.
    pub device_type: &'static str,
    pub bot: bool,
}

impl DeviceInfo {
    pub fn facts(&self) -> FactSet {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(facts)) => facts,
            _ => FactSet::new(),
        }
    }
}

/// The parser and its cache.
pub struct Devices {
    /// The rules compiled, with literal prefilters: only the regexes whose required
    /// text occurs in an agent are tried.
    rules: ua_parser::Extractor<'static>,
    cache: Cache<DeviceInfo>,
}

impl Devices {
    /// The rules at `regexes` (a uap-core `regexes.yaml`), or the bundled ones.
    pub fn load(regexes: Option<&Path>, cache_size: usize) -> Result<Self, EnrichError> {
        let rules = match regexes {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    EnrichError::Data(format!("device rules {}: {err}", path.display()))
                })?;
                compile(&text, &path.display().to_string())?
            }
            None => compile(BUNDLED_REGEXES, "the bundled regexes.yaml")?,
        };
        Ok(Self {
            rules,
            cache: Cache::new(cache_size),
        })
    }

    /// Parses `user_agent`, or finds it parsed.
    pub fn lookup(&self, user_agent: &str) -> Arc<DeviceInfo> {
        self.cache
            .get_or_insert_with(user_agent, || self.parse(user_agent))
    }

    /// Parses `user_agent` (no cache).
    pub fn parse(&self, user_agent: &str) -> DeviceInfo {
        let (agent, os, device) = self.rules.extract(user_agent);
        let version = |parts: [Option<&str>; 3]| {
            let parts: Vec<&str> = parts.into_iter().map_while(|part| part).collect();
            (!parts.is_empty()).then(|| parts.join("."))
        };
        let agent = agent.unwrap_or_default();
        let os = os.unwrap_or_default();
        let os_family = if os.os.is_empty() { "Other" } else { &os.os };
        let (device_family, brand, model) = match device {
            Some(device) => (
                device.device.to_string(),
                device.brand.map(|brand| brand.to_string()),
                device.model.map(|model| model.to_string()),
            ),
            None => ("Other".to_string(), None, None),
        };
        let bot = device_family == "Spider" || cairn_event::looks_like_a_bot(user_agent);
        DeviceInfo {
            browser: if agent.family.is_empty() {
                "Other".to_string()
            } else {
                agent.family.to_string()
            },
            browser_version: version([agent.major, agent.minor, agent.patch]),
            os: os_family.to_string(),
            os_version: version([
                os.major.as_deref(),
                os.minor.as_deref(),
                os.patch.as_deref(),
            ]),
            device_type: device_type(bot, user_agent, os_family, &device_family),
            device: device_family,
            brand,
            model,
            bot,
        }
    }
}

fn compile(yaml: &str, name: &str) -> Result<ua_parser::Extractor<'static>, EnrichError> {
    let unusable =
        |err: &dyn std::fmt::Display| EnrichError::Data(format!("device rules {name}: {err}"));
    let regexes: ua_parser::Regexes<'static> =
        serde_yaml::from_str(yaml).map_err(|err| unusable(&err))?;
    ua_parser::Extractor::try_from(regexes).map_err(|err| unusable(&err))
}

/// The kind of device, from the parsed families and the raw string.
fn device_type(bot: bool, user_agent: &str, os: &str, device: &str) -> &'static str {
    if bot {
        return "bot";
    }
    let has = |marker: &str| user_agent.contains(marker);
    let tv_markers = [
        "SmartTV",
        "SMART-TV",
        "Smart-TV",
        "SmartTv",
        "HbbTV",
        "AppleTV",
        "GoogleTV",
        "Android TV",
        "AFT",
        "CrKey",
        "Roku",
        "BRAVIA",
        "NetCast",
        "Web0S",
        "webOS.TV",
        "Tizen TV",
        "PlayStation",
        "Xbox",
        "Nintendo",
    ];
    if tv_markers.iter().any(|marker| has(marker)) || device.contains("TV") {
        return "tv";
    }
    let tablet_markers = [
        "iPad", "Tablet", "tablet", "Kindle", "Silk/", "PlayBook", "Nexus 7", "Nexus 9",
        "Nexus 10", "SM-T", "SM-X", "GT-P", "Tab",
    ];
    let android = os == "Android" || has("Android");
    if tablet_markers.iter().any(|marker| has(marker))
        || device == "iPad"
        || (android && !has("Mobile") && !has("Phone"))
    {
        return "tablet";
    }
    let mobile_markers = [
        "Mobile",
        "iPhone",
        "iPod",
        "Windows Phone",
        "BlackBerry",
        "BB10",
        "Opera Mini",
        "KaiOS",
        "Symbian",
        "Nokia",
        "Phone",
    ];
    if android
        || os == "iOS"
        || mobile_markers.iter().any(|marker| has(marker))
        || matches!(
            device,
            "iPhone" | "iPod" | "Generic Smartphone" | "Generic Feature Phone"
        )
    {
        return "mobile";
    }
    let desktop_systems = [
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Chrome OS",
        "Fedora",
        "FreeBSD",
        "Debian",
        "OpenBSD",
        "NetBSD",
        "Solaris",
    ];
    if desktop_systems.iter().any(|system| os.starts_with(system)) || device == "Mac" {
        return "desktop";
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Devices {
        Devices::load(None, 1000).unwrap()
    }

    #[test]
    fn common_agents_are_told_apart() {
        let devices = devices();
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                "Chrome",
                "Windows",
                "desktop",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
                "Safari",
                "Mac OS X",
                "desktop",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
                "Mobile Safari",
                "iOS",
                "mobile",
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
                "Mobile Safari",
                "iOS",
                "tablet",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
                "Chrome Mobile",
                "Android",
                "mobile",
            ),
            (
                "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36",
                "Chrome",
                "Android",
                "tablet",
            ),
            (
                "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36",
                "Samsung Internet",
                "Tizen",
                "tv",
            ),
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                "Googlebot",
                "Other",
                "bot",
            ),
        ];
        for (agent, browser, os, kind) in cases {
            let info = devices.parse(agent);
            assert_eq!(info.browser, browser, "{agent}");
            assert_eq!(info.os, os, "{agent}");
            assert_eq!(info.device_type, kind, "{agent}");
            assert_eq!(info.bot, kind == "bot", "{agent}");
        }
        let pixel = devices.parse(cases[4].0);
        assert_eq!(pixel.brand.as_deref(), Some("Google"));
        assert_eq!(pixel.model.as_deref(), Some("Pixel 8"));
        assert_eq!(pixel.browser_version.as_deref(), Some("120.0.0"));
        assert_eq!(pixel.os_version.as_deref(), Some("14"));
    }

    #[test]
    fn the_cache_answers_what_the_parser_answers() {
        let devices = devices();
        let agent = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
        assert_eq!(*devices.lookup(agent), devices.parse(agent));
        assert_eq!(*devices.lookup(agent), devices.parse(agent));
        assert_eq!(devices.lookup(agent).browser, "Firefox");
    }

    #[test]
    fn unreadable_rules_are_an_error_that_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regexes.yaml");
        std::fs::write(&path, "user_agent_parsers: [oops").unwrap();
        let err = Devices::load(Some(&path), 10).err().unwrap().to_string();
        assert!(err.contains("regexes.yaml"), "{err}");
    }
}
