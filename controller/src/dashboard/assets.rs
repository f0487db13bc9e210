//! The page, compiled into the binary: one HTML file, one script, one style sheet and an
//! icon, hand-written (charts are SVG drawn by the script). No build step, no network.

use serde::Serialize;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// Where the page's configuration goes in `index.html`.
const CONFIG_SLOT: &str = "{{CONFIG}}";

/// What the page knows of this run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PageConfig<'a> {
    /// The per-run token, sent back with every action.
    pub token: &'a str,
    /// Whether buttons are hidden (and actions refused).
    pub read_only: bool,
    /// `namespace bookinfo` or `all namespaces`.
    pub scope: String,
    /// The observed split's source, if any.
    pub split: Option<String>,
    /// The plugin's version.
    pub version: &'a str,
}

/// The page with `config` in it, as a JSON data block (`<` escaped, so no value can close
/// the script element).
pub fn index_html(config: &PageConfig<'_>) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(config)?.replace('<', "\\u003c");
    Ok(INDEX_HTML.replace(CONFIG_SLOT, &json))
}

/// An asset's content type and body.
pub fn asset(file: &str) -> Option<(&'static str, &'static str)> {
    match file {
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        "icon.svg" => Some(("image/svg+xml", ICON_SVG)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_its_config_and_no_value_can_close_the_script() {
        let html = index_html(&PageConfig {
            token: "abc",
            read_only: false,
            scope: "namespace </script><script>alert(1)</script>".into(),
            split: None,
            version: "0.1.0",
        })
        .unwrap();
        assert!(html.contains("\"token\":\"abc\""));
        assert!(!html.contains(CONFIG_SLOT));
        assert!(!html.contains("</script><script>alert(1)"));
        assert!(html.contains("\\u003c/script>"));
    }

    #[test]
    fn the_page_loads_nothing_from_outside_the_binary() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for outside in ["http://", "https://", "//cdn", "@import"] {
                let hits: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(outside) && !l.contains("www.w3.org/2000/svg"))
                    .collect();
                assert!(hits.is_empty(), "{name} refers to {outside}: {hits:?}");
            }
        }
        for file in ["app.js", "app.css", "icon.svg"] {
            assert!(asset(file).is_some(), "{file}");
            assert!(
                INDEX_HTML.contains(file) || file == "icon.svg" && INDEX_HTML.contains("icon.svg")
            );
        }
    }
}
