//! Email templates: a subject, a text body and an optional HTML body, each a minijinja
//! template over `profile` (the profile as `cairn profile get` shows it: `traits`,
//! `facts`, `visit_count`, ...), `params` (the campaign action's parameters),
//! `campaign`, `email` (the address it goes to) and `unsubscribe_url`.
//!
//! An HTML body that is an MJML document (it starts with `<mjml>`) is rendered by
//! minijinja, then turned into the email's HTML by mrml (responsive tables, inlined
//! layout), so marketers can write the layout language their tools export.
//!
//! Saved templates are checked strictly: a variable outside those, or a profile field
//! the profile does not have (`profile.emial`), is refused when the template is saved,
//! naming the part and the variable. Sending renders leniently: a trait this profile
//! lacks renders empty rather than failing the send. Each save makes a new version
//! (`t:<name>` is the current one; `t:<name>@<version>` keeps each).

use std::collections::BTreeSet;

use bytes::Bytes;
use cairn_profile_store::profile::ProfileSchema;
use cairn_runtime::clock::now_ms;
use cairn_store::{Expect, Outcome, Retention, Store, TableSpec, Write};
use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::error::DispatchError;

/// Templates and sends.
pub const DISPATCH: TableSpec = TableSpec {
    name: "dispatch",
    timeline: Retention {
        max_entries: 1,
        max_age: None,
    },
};

/// What a template may read.
const ROOTS: &[&str] = &["profile", "params", "campaign", "email", "unsubscribe_url"];
/// Longest template part.
const MAX_PART_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    pub subject: String,
    pub text: String,
    #[serde(default)]
    pub html: Option<String>,
    /// The list its emails belong to (`promotions`): one can unsubscribe from a list
    /// and keep the others. None: unsubscribing stops every campaign email.
    #[serde(default)]
    pub list: Option<String>,
    /// 1 for the first save.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub updated_ms: i64,
}

/// An email as rendered for one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

fn invalid(name: &str, reason: impl Into<String>) -> DispatchError {
    DispatchError::Template {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Template {
    /// The parts, named as errors name them.
    fn parts(&self) -> Vec<(&'static str, &str)> {
        let mut parts = vec![
            ("subject", self.subject.as_str()),
            ("text", self.text.as_str()),
        ];
        if let Some(html) = &self.html {
            parts.push(("html", html.as_str()));
        }
        parts
    }

    /// Every problem with the template, each naming its part: syntax, unknown
    /// variables, unknown profile fields, a missing subject or body.
    pub fn check(&self) -> Result<(), DispatchError> {
        if !name_ok(&self.name) {
            return Err(invalid(
                &self.name,
                "the name must be 1 to 100 letters, digits, _ or -",
            ));
        }
        let mut problems = Vec::new();
        if self.subject.trim().is_empty() {
            problems.push("subject: empty".to_string());
        }
        if self.text.trim().is_empty()
            && self
                .html
                .as_deref()
                .is_none_or(|html| html.trim().is_empty())
        {
            problems.push("text: a template needs a text or an HTML body".to_string());
        }
        if let Some(list) = &self.list
            && !cairn_bus::suppressions::list_name_ok(list)
        {
            problems.push(format!(
                "list: {list:?} must be 1 to 64 lower-case letters, digits, _ or -"
            ));
        }
        let env = environment(UndefinedBehavior::Strict);
        for (part, source) in self.parts() {
            if source.len() > MAX_PART_BYTES {
                problems.push(format!("{part}: longer than {} KB", MAX_PART_BYTES / 1024));
                continue;
            }
            let template = match env.template_from_str(source) {
                Ok(template) => template,
                Err(err) => {
                    problems.push(format!("{part}: {}", describe(&err)));
                    continue;
                }
            };
            let variables: BTreeSet<String> =
                template.undeclared_variables(true).into_iter().collect();
            for variable in variables {
                if let Some(problem) = unknown(&variable) {
                    problems.push(format!("{part}: {problem}"));
                }
            }
        }
        if let Some(html) = self.html.as_deref().filter(|html| is_mjml(html))
            && problems.is_empty()
        {
            // The document as minijinja leaves it (nothing known: loops and conditions
            // render empty) must be MJML that mrml reads.
            let plain = environment(UndefinedBehavior::Chainable);
            if let Ok(document) = plain.render_str(html, minijinja::context! {})
                && let Err(err) = mjml_to_html(&document)
            {
                problems.push(format!("html: {err}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(invalid(&self.name, problems.join("; ")))
        }
    }

    /// The email for `context` (`profile`, `params`, `campaign`, `email`); what the
    /// context lacks renders empty. In the HTML body every value is escaped (traits and
    /// event properties come from browsers); `| safe` marks what a template trusts.
    pub fn render(&self, context: &serde_json::Value) -> Result<Rendered, DispatchError> {
        // A null (a parameter the event did not have) renders empty, like a missing one.
        let context = &without_nulls(context);
        let plain = environment(UndefinedBehavior::Chainable);
        let mut html_env = environment(UndefinedBehavior::Chainable);
        html_env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        let render_in = |env: &Environment<'static>, part: &str, source: &str| {
            env.render_str(source, minijinja::value::Serde(context))
                .map_err(|err| invalid(&self.name, format!("{part}: {}", describe(&err))))
        };
        let render = |part: &str, source: &str| render_in(&plain, part, source);
        Ok(Rendered {
            // A subject is one line.
            subject: render("subject", &self.subject)?
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" "),
            text: render("text", &self.text)?,
            html: match &self.html {
                Some(html) if is_mjml(html) => Some(
                    mjml_to_html(&render_in(&html_env, "html", html)?)
                        .map_err(|err| invalid(&self.name, format!("html: {err}")))?,
                ),
                Some(html) => Some(render_in(&html_env, "html", html)?),
                None => None,
            },
        })
    }
}

/// Whether an HTML body is written in MJML.
pub fn is_mjml(html: &str) -> bool {
    html.trim_start().starts_with("<mjml")
}

/// The HTML of the MJML `document`, or what mrml found wrong with it.
fn mjml_to_html(document: &str) -> Result<String, String> {
    let parsed = mrml::parse(document).map_err(|err| format!("MJML: {err}"))?;
    parsed
        .element
        .render(&mrml::prelude::render::RenderOptions::default())
        .map_err(|err| format!("MJML: {err}"))
}

/// `value` without the nulls in its objects.
fn without_nulls(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(fields) => serde_json::Value::Object(
            fields
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(name, value)| (name.clone(), without_nulls(value)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(without_nulls).collect())
        }
        other => other.clone(),
    }
}

fn environment(undefined: UndefinedBehavior) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(undefined);
    env
}

fn describe(err: &minijinja::Error) -> String {
    match err.line() {
        Some(line) => format!("line {line}: {}", err.detail().unwrap_or(&err.to_string())),
        None => err.to_string(),
    }
}

/// Why `variable` (as minijinja names it, `profile.traits.name`) cannot be read, if it
/// cannot.
fn unknown(variable: &str) -> Option<String> {
    let mut parts = variable.split('.');
    let root = parts.next().unwrap_or_default();
    if !ROOTS.contains(&root) {
        return Some(format!(
            "{variable:?} is not something a template can read (profile, params, campaign, email, unsubscribe_url)"
        ));
    }
    if root == "profile"
        && let Some(field) = parts.next()
        && !ProfileSchema::is_top_field(field)
    {
        return Some(format!(
            "the profile has no field {field:?} (traits are under profile.traits.*)"
        ));
    }
    None
}

fn current_key(name: &str) -> Bytes {
    Bytes::from(format!("t:{name}"))
}

/// The current version of template `name`.
pub async fn get<S: Store>(store: &S, name: &str) -> Result<Template, DispatchError> {
    let record = store
        .get(&DISPATCH, &current_key(name))
        .await?
        .ok_or_else(|| DispatchError::MissingTemplate(name.to_string()))?;
    serde_json::from_slice(&record.value)
        .map_err(|err| DispatchError::Corrupt(format!("template {name}: {err}")))
}

/// The names of the saved templates: one record, so that listing them reads no sends.
const INDEX: &[u8] = b"templates";

async fn names<S: Store>(store: &S) -> Result<BTreeSet<String>, DispatchError> {
    match store.get(&DISPATCH, INDEX).await? {
        Some(record) => serde_json::from_slice(&record.value)
            .map_err(|err| DispatchError::Corrupt(format!("template index: {err}"))),
        None => Ok(BTreeSet::new()),
    }
}

async fn add_to_index<S: Store>(store: &S, name: &str) -> Result<(), DispatchError> {
    let mut damaged = None;
    store
        .update(&DISPATCH, Bytes::from_static(INDEX), 20, |current| {
            let mut names: BTreeSet<String> = match current {
                Some(record) => match serde_json::from_slice(&record.value) {
                    Ok(names) => names,
                    Err(err) => {
                        damaged = Some(err.to_string());
                        return None;
                    }
                },
                None => BTreeSet::new(),
            };
            if !names.insert(name.to_string()) {
                return None;
            }
            serde_json::to_vec(&names)
                .ok()
                .map(cairn_store::Change::set)
        })
        .await?;
    match damaged {
        Some(err) => Err(DispatchError::Corrupt(format!("template index: {err}"))),
        None => Ok(()),
    }
}

/// Every saved template, by name.
pub async fn list<S: Store>(store: &S) -> Result<Vec<Template>, DispatchError> {
    let mut templates = Vec::new();
    for name in names(store).await? {
        templates.push(get(store, &name).await?);
    }
    Ok(templates)
}

/// Saves `template` once it checks out, as the next version; returns what was saved.
pub async fn put<S: Store>(store: &S, mut template: Template) -> Result<Template, DispatchError> {
    template.check()?;
    for _ in 0..20 {
        let current = store.get(&DISPATCH, &current_key(&template.name)).await?;
        let (version, expect) = match &current {
            Some(record) => {
                let saved: Template = serde_json::from_slice(&record.value).map_err(|err| {
                    DispatchError::Corrupt(format!("template {}: {err}", template.name))
                })?;
                (saved.version + 1, Expect::Version(record.version))
            }
            None => (1, Expect::Absent),
        };
        template.version = version;
        template.updated_ms = now_ms();
        let value = Bytes::from(
            serde_json::to_vec(&template)
                .map_err(|err| DispatchError::Corrupt(format!("template: {err}")))?,
        );
        let outcome = store
            .write(
                &DISPATCH,
                Write::new(current_key(&template.name)).record(expect, value.clone()),
            )
            .await?;
        if matches!(outcome, Outcome::Applied { .. }) {
            store
                .write(
                    &DISPATCH,
                    Write::new(Bytes::from(format!("t:{}@{version}", template.name)))
                        .record(Expect::Any, value),
                )
                .await?;
            add_to_index(store, &template.name).await?;
            tracing::info!(template = %template.name, version, "template saved");
            return Ok(template);
        }
    }
    Err(DispatchError::Busy(format!(
        "template {} kept changing",
        template.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(subject: &str, text: &str) -> Template {
        Template {
            name: "welcome".into(),
            subject: subject.into(),
            text: text.into(),
            html: None,
            list: None,
            version: 0,
            updated_ms: 0,
        }
    }

    #[test]
    fn a_template_renders_traits_params_and_campaign() {
        let welcome = Template {
            html: Some("<p>Hi {{ profile.traits.name }}</p>".into()),
            ..template(
                "Your {{ params.section }} cart, {{ profile.traits.name }}",
                "Hi {{ profile.traits.name | default('there') }}, {{ campaign }} for {{ email }}. {{ profile.traits.missing }}{{ params.gone }}",
            )
        };
        welcome.check().unwrap();
        let rendered = welcome
            .render(&json!({
                "profile": {"traits": {"name": "Ann <b>"}},
                "params": {"section": "shoes", "gone": null},
                "campaign": "cart_recovery",
                "email": "ann@example.com",
            }))
            .unwrap();
        assert_eq!(rendered.subject, "Your shoes cart, Ann <b>");
        assert_eq!(
            rendered.text,
            "Hi Ann <b>, cart_recovery for ann@example.com. "
        );
        // What browsers sent never becomes markup in the HTML body.
        assert_eq!(rendered.html.as_deref(), Some("<p>Hi Ann &lt;b&gt;</p>"));
    }

    #[test]
    fn unknown_variables_and_bad_syntax_are_refused_naming_the_part() {
        let cases = [
            (
                template("Hi {{ name }}", "x"),
                "subject: \"name\" is not something a template can read",
            ),
            (
                template("Hi", "{{ profile.emial }}"),
                "text: the profile has no field \"emial\"",
            ),
            (template("Hi {{ params.x", "x"), "subject: line 1"),
            (template("", "x"), "subject: empty"),
            (
                template("Hi", " "),
                "text: a template needs a text or an HTML body",
            ),
        ];
        for (template, expected) in cases {
            let err = template.check().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}\n  expected: {expected}");
        }
        let bad_name = Template {
            name: "no spaces".into(),
            ..template("Hi", "x")
        };
        assert!(bad_name.check().is_err());
    }

    #[test]
    fn an_mjml_body_becomes_html_and_a_broken_one_is_refused() {
        let mjml = Template {
            html: Some(
                "<mjml><mj-body><mj-section><mj-column>\
                 <mj-text>Hi {{ profile.traits.name }}</mj-text>\
                 {% if params.section %}<mj-button href=\"https://shop.example.com/{{ params.section }}\">Back to {{ params.section }}</mj-button>{% endif %}\
                 </mj-column></mj-section></mj-body></mjml>"
                    .into(),
            ),
            ..template("Hi", "Hi")
        };
        mjml.check().unwrap();
        let rendered = mjml
            .render(&serde_json::json!({
                "profile": {"traits": {"name": "Ann <3"}},
                "params": {"section": "shoes"},
            }))
            .unwrap();
        let html = rendered.html.unwrap();
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(html.contains("Hi Ann &lt;3"), "{html}");
        assert!(
            html.contains("href=\"https://shop.example.com/shoes\""),
            "{html}"
        );
        assert!(!html.contains("<mj-"), "{html}");

        let broken = Template {
            html: Some("<mjml><mj-body><mj-section><mj-column></mj-body></mjml>".into()),
            ..template("Hi", "Hi")
        };
        let err = broken.check().unwrap_err().to_string();
        assert!(err.contains("html: MJML"), "{err}");
    }
}
