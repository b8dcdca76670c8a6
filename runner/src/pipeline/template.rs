//! Rendering of `push.config` templates with minijinja in strict mode: an undefined name is an
//! error, never an empty string.
//!
//! A template sees only the [`TemplateContext`]: it has no loader, so it cannot include or import
//! other files, and a fuel budget bounds the work and memory one render may use. Output is not
//! escaped (these are config files, not HTML) and a trailing newline is kept. This module must
//! not read files or know where the result goes: the executor reads the template through the
//! `Source` and pushes the result.

use std::collections::BTreeMap;
use std::net::IpAddr;

use minijinja::syntax::SyntaxConfig;
use minijinja::{context, AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use secrecy::{ExposeSecret, SecretString};

/// The work (instructions and bytes) one render may spend, about 64 bytes of memory per unit:
/// plenty for a config file, a bound for a runaway loop.
pub const TEMPLATE_FUEL: u64 = 500_000;

/// What a config template can see: `hosts.<role>.address`, `build.number`, `build.commit`,
/// `build.branch`, `repo.name`, `env.<NAME>`, and `secrets.<NAME>` for the secrets its config push
/// lists (and no other).
#[derive(Debug, Clone)]
pub struct TemplateContext {
    pub hosts: BTreeMap<String, IpAddr>,
    pub build_number: u64,
    pub commit: String,
    pub branch: String,
    pub repo_name: String,
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, SecretString>,
}

#[derive(Debug, thiserror::Error)]
#[error("{name}:{line}: {message}")]
pub struct TemplateError {
    pub name: String,
    /// 1-based; 0 when the engine could not tell.
    pub line: usize,
    pub message: String,
}

/// Render `text` (the template file `name`) against `ctx`.
pub fn render_template(name: &str, text: &str, ctx: &TemplateContext) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_debug(true);
    let syntax = SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .map_err(|error| template_error(name, text, ctx, &error))?;
    env.set_syntax(syntax);
    let template = env.template_from_named_str(name, text).map_err(|error| template_error(name, text, ctx, &error))?;
    template.render(context_value(ctx)).map_err(|error| template_error(name, text, ctx, &error))
}

fn context_value(ctx: &TemplateContext) -> Value {
    let hosts: BTreeMap<String, Value> =
        ctx.hosts.iter().map(|(role, address)| (role.clone(), context! { address => address.to_string() })).collect();
    let env: BTreeMap<String, Value> =
        ctx.env.iter().map(|(name, value)| (name.clone(), Value::from(value.as_str()))).collect();
    let secrets: BTreeMap<String, Value> =
        ctx.secrets.iter().map(|(name, value)| (name.clone(), Value::from(value.expose_secret()))).collect();
    context! {
        hosts => Value::from(hosts),
        build => context! {
            number => ctx.build_number,
            commit => ctx.commit.as_str(),
            branch => ctx.branch.as_str(),
        },
        repo => context! { name => ctx.repo_name.as_str() },
        env => Value::from(env),
        secrets => Value::from(secrets),
    }
}

/// A minijinja error as a [`TemplateError`]: the failing expression is quoted when the engine
/// gives no detail, and an undefined name comes with the list of names a template can use.
fn template_error(name: &str, text: &str, ctx: &TemplateContext, error: &minijinja::Error) -> TemplateError {
    let expression = || error.range().and_then(|range| text.get(range)).filter(|expr| !expr.contains('\n'));
    let mut message = match (error.detail(), expression()) {
        (Some(detail), _) => format!("{}: {detail}", error.kind()),
        (None, Some(expression)) => format!("{} in `{expression}`", error.kind()),
        (None, None) => error.kind().to_string(),
    };
    if error.kind() == ErrorKind::UndefinedError {
        let roles = ctx.hosts.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        let vars = ctx.env.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        let secrets = ctx.secrets.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        message.push_str(&format!(
            " (a template sees hosts.<role>.address for roles [{roles}], build.number, build.commit, \
                build.branch, repo.name, env.<NAME> for [{vars}] and secrets.<NAME> for the secrets its \
                config push lists: [{secrets}])"
        ));
    }
    TemplateError { name: name.to_owned(), line: error.line().unwrap_or(0), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> TemplateContext {
        TemplateContext {
            hosts: BTreeMap::from([
                ("db".to_owned(), "127.0.10.2".parse().unwrap()),
                ("web".to_owned(), "127.0.10.3".parse().unwrap()),
            ]),
            build_number: 42,
            commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            branch: "main".to_owned(),
            repo_name: "acme".to_owned(),
            env: BTreeMap::from([("APP_ENV".to_owned(), "test".to_owned())]),
            secrets: BTreeMap::new(),
        }
    }

    #[test]
    fn a_template_renders_addresses_and_build_facts() {
        let text = "# build {{ build.number }} of {{ repo.name }} ({{ build.commit[:7] }} on {{ build.branch }})\n\
            DATABASE_URL=postgresql://postgres@{{ hosts.db.address }}:5432/app\nAPP_ENV={{ env.APP_ENV }}\n";
        let rendered = render_template("ci/app.env.j2", text, &context()).unwrap();
        assert_eq!(
            rendered,
            "# build 42 of acme (0123456 on main)\nDATABASE_URL=postgresql://postgres@127.0.10.2:5432/app\n\
                APP_ENV=test\n"
        );
    }

    #[test]
    fn an_undefined_name_is_an_error_with_the_template_name_and_line() {
        let text = "A={{ hosts.db.address }}\nB={{ hosts.cache.address }}\n";
        let error = render_template("ci/app.env.j2", text, &context()).unwrap_err();
        assert_eq!(error.name, "ci/app.env.j2");
        assert_eq!(error.line, 2);
        assert!(error.message.contains("`hosts.cache` is undefined"), "{}", error.message);
        assert!(error.message.contains("[db, web]"), "{}", error.message);
        assert!(error.to_string().starts_with("ci/app.env.j2:2: "), "{error}");
    }

    #[test]
    fn an_undefined_env_variable_is_an_error() {
        let error = render_template("t", "{{ env.MISSING }}", &context()).unwrap_err();
        assert_eq!(error.line, 1);
        assert!(error.message.contains("undefined"), "{}", error.message);
    }

    #[test]
    fn is_defined_tests_still_work_in_strict_mode() {
        let text = "{% if env.MISSING is defined %}yes{% else %}no{% endif %}";
        assert_eq!(render_template("t", text, &context()).unwrap(), "no");
    }

    #[test]
    fn output_is_not_html_escaped() {
        let mut ctx = context();
        ctx.env.insert("PASSWORD".to_owned(), "a<b&\"c\"".to_owned());
        let rendered = render_template("app.html", "P={{ env.PASSWORD }}", &ctx).unwrap();
        assert_eq!(rendered, "P=a<b&\"c\"");
    }

    #[test]
    fn a_template_cannot_include_files() {
        let error = render_template("t", "{% include \"/etc/passwd\" %}", &context()).unwrap_err();
        assert!(error.message.contains("not found") || error.message.contains("does not exist"), "{}", error.message);
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let error = render_template("t", "ok\n{% if %}\n", &context()).unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.message.contains("syntax error"), "{}", error.message);
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let text = "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}";
        let error = render_template("t", text, &context()).unwrap_err();
        assert!(error.message.contains("fuel"), "{}", error.message);
    }
}
