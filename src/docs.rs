//! Documents served from the binary: the service OpenAPI document (YAML, and a
//! self-contained HTML rendering with no external assets), the development manual
//! (Markdown in `docs/dev/`, rendered to HTML), and a lambda's own OpenAPI document.
//! Depends on nothing else in the crate.

use std::fmt::Write as _;

/// The service's OpenAPI document, exactly as served.
pub const SERVICE_SPEC_YAML: &str = include_str!("../docs/openapi.yaml");

/// Pages of the development manual: (file stem, Markdown).
const MANUAL: &[(&str, &str)] = &[
    ("index", include_str!("../docs/dev/index.md")),
    ("writing", include_str!("../docs/dev/writing.md")),
    ("sdk", include_str!("../docs/dev/sdk.md")),
    ("python", include_str!("../docs/dev/python.md")),
    ("packing", include_str!("../docs/dev/packing.md")),
    ("validating", include_str!("../docs/dev/validating.md")),
    ("deploying", include_str!("../docs/dev/deploying.md")),
    ("calling", include_str!("../docs/dev/calling.md")),
    ("debugging", include_str!("../docs/dev/debugging.md")),
];

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#222}\
code,pre{font-family:ui-monospace,monospace;background:#f4f4f4}pre{padding:.75rem;overflow-x:auto}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top}\
nav a{margin-right:1rem}.op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}\
.m{font-weight:bold;text-transform:uppercase;display:inline-block;min-width:5rem}";

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn markdown(text: &str) -> String {
    let options = pulldown_cmark::Options::ENABLE_TABLES;
    // Raw HTML in Markdown is shown as text: documents may come from lambda archives.
    // Link targets too: only web, mail and relative ones survive (no `javascript:`).
    let parser = pulldown_cmark::Parser::new_ext(text, options).map(|event| match event {
        pulldown_cmark::Event::Html(html) | pulldown_cmark::Event::InlineHtml(html) => {
            pulldown_cmark::Event::Text(html)
        }
        pulldown_cmark::Event::Start(pulldown_cmark::Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => pulldown_cmark::Event::Start(pulldown_cmark::Tag::Link {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        pulldown_cmark::Event::Start(pulldown_cmark::Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => pulldown_cmark::Event::Start(pulldown_cmark::Tag::Image {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        other => other,
    });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, parser);
    html
}

/// `url` if it is relative or http(s)/mailto, else a harmless `#`.
fn safe_url(url: pulldown_cmark::CowStr<'_>) -> pulldown_cmark::CowStr<'_> {
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .filter(|s| !s.contains(['/', '?', '#']));
    match scheme {
        None => url,
        Some(s) if ["http", "https", "mailto"].contains(&s.to_ascii_lowercase().as_str()) => url,
        Some(_) => "#".into(),
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

/// A page of the development manual by file name (`index.html`), rendered.
pub fn manual_page(file: &str) -> Option<String> {
    let stem = file.strip_suffix(".html")?;
    let (_, text) = MANUAL.iter().find(|(name, _)| *name == stem)?;
    let mut nav = String::from("<nav>");
    for (name, _) in MANUAL {
        let _ = write!(nav, "<a href=\"{name}.html\">{name}</a>");
    }
    nav.push_str("</nav>");
    Some(page(
        &format!("luna-lambda development manual: {stem}"),
        &format!("{nav}{}", markdown(text)),
    ))
}

/// Renders an OpenAPI document (YAML or JSON text) as one self-contained HTML page.
pub fn openapi_html(spec_text: &str) -> String {
    let spec: serde_json::Value = match serde_yaml::from_str(spec_text) {
        Ok(v) => v,
        Err(e) => {
            return page(
                "OpenAPI document",
                &format!(
                    "<p>The document could not be parsed ({}); its text follows.</p><pre>{}</pre>",
                    escape(&e.to_string()),
                    escape(spec_text)
                ),
            );
        }
    };
    let str_at = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let info = spec.get("info").cloned().unwrap_or_default();
    let title = str_at(&info, "title");
    let mut body = format!(
        "<h1>{} <small>{}</small></h1>{}",
        escape(&title),
        escape(&str_at(&info, "version")),
        markdown(&str_at(&info, "description"))
    );
    if let Some(paths) = spec.get("paths").and_then(serde_json::Value::as_object) {
        body.push_str("<h2>Routes</h2>");
        for (path, item) in paths {
            let Some(ops) = item.as_object() else {
                continue;
            };
            for (method, op) in ops {
                if !["get", "put", "post", "delete", "options", "head", "patch"]
                    .contains(&method.as_str())
                {
                    continue;
                }
                let _ = write!(
                    body,
                    "<div class=\"op\"><p><span class=\"m\">{}</span><code>{}</code> {}</p>{}",
                    escape(method),
                    escape(path),
                    escape(&str_at(op, "summary")),
                    markdown(&str_at(op, "description"))
                );
                if let Some(params) = op.get("parameters").and_then(serde_json::Value::as_array)
                    && !params.is_empty()
                {
                    body.push_str("<table><tr><th>parameter</th><th>in</th><th>required</th><th>description</th></tr>");
                    for p in params {
                        let _ = write!(
                            body,
                            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                            escape(&str_at(p, "name")),
                            escape(&str_at(p, "in")),
                            p.get("required")
                                .and_then(serde_json::Value::as_bool)
                                .unwrap_or(false),
                            escape(&str_at(p, "description")),
                        );
                    }
                    body.push_str("</table>");
                }
                if let Some(responses) = op.get("responses").and_then(serde_json::Value::as_object)
                {
                    body.push_str("<p>Responses: ");
                    for (code, r) in responses {
                        let _ = write!(
                            body,
                            "<code>{}</code> {}; ",
                            escape(code),
                            escape(&str_at(r, "description"))
                        );
                    }
                    body.push_str("</p>");
                }
                body.push_str("</div>");
            }
        }
    }
    let _ = write!(
        body,
        "<details><summary>Full document (YAML)</summary><pre>{}</pre></details>",
        escape(spec_text)
    );
    page(&title, &body)
}

/// The OpenAPI document of a lambda without one in its archive: it documents the
/// proxy route generically.
pub fn default_lambda_spec(lambda_id: &str, name: &str) -> String {
    format!(
        "openapi: 3.0.3\ninfo:\n  title: '{name}'\n  version: '1'\n  description: >-\n    Lambda {lambda_id} ships no OpenAPI document; any method and path under\n    /1/lambdas/{lambda_id}/proxy/ is forwarded to it.\npaths:\n  /main:\n    post:\n      summary: Call the lambda's main handler\n      requestBody:\n        content:\n          application/json:\n            schema:\n              type: object\n      responses:\n        '200':\n          description: The lambda's answer\n",
        name = name.replace('\'', "''"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_renders_without_external_assets() {
        let spec: serde_json::Value = serde_yaml::from_str(SERVICE_SPEC_YAML).unwrap();
        assert!(spec["paths"]["/1/lambdas"].is_object());
        let html = openapi_html(SERVICE_SPEC_YAML);
        assert!(html.contains("/1/lambdas/{lambda_id}/proxy"));
        assert!(!html.contains("http://") || !html.contains("<script src"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("<link"));
    }

    #[test]
    fn manual_pages_render() {
        for (name, _) in MANUAL {
            let html = manual_page(&format!("{name}.html")).unwrap();
            assert!(html.contains("<nav>"));
        }
        assert!(manual_page("nope.html").is_none());
        assert!(manual_page("index").is_none());
    }

    #[test]
    fn default_lambda_spec_is_yaml() {
        let text = default_lambda_spec("id", "it's");
        let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(v["info"]["title"], "it's");
    }

    #[test]
    fn link_schemes_are_filtered() {
        let html = markdown(
            "[a](javascript:alert(1)) [b](https://x.test/p) [c](./rel.html) [d](JaVaScRiPt:x) ![e](data:x) [f](/p?q=a:b)",
        );
        assert!(!html.to_ascii_lowercase().contains("javascript"), "{html}");
        assert!(!html.contains("data:x"), "{html}");
        for kept in ["https://x.test/p", "./rel.html", "/p?q=a:b"] {
            assert!(html.contains(kept), "{kept} in {html}");
        }
    }

    #[test]
    fn html_is_escaped() {
        let html = openapi_html("info:\n  title: '<script>x</script>'\n");
        assert!(!html.contains("<script>x"));
    }
}
