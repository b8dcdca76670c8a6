//! The `hosts:` section, and references to its roles from everywhere else: each role is checked
//! as a name and its setup timeout as a duration; [`HostRefs`] reports a push or stage naming a
//! host that is not declared, with the closest declared role as a suggestion. It only reads the
//! raw file and reports; it decides nothing about how a host is provisioned.

use super::names::{check_secrets, closest, is_role, list, MAX_NAME_LEN};
use super::values::check_timeout;
use super::Report;
use crate::pipeline::raw::RawHost;
use crate::pipeline::yaml::KeyPath;
use crate::pipeline::HostDef;

/// The hosts in file order, each checked, and their roles (broken ones included, so references
/// to them are not reported a second time).
pub(super) fn check_hosts(raw: Vec<(String, RawHost)>, report: &mut Report<'_>) -> (Vec<HostDef>, Vec<String>) {
    let hosts_path = KeyPath::root().key("hosts");
    if raw.is_empty() && !report.misspelled.contains("hosts") {
        report.key(
            &hosts_path,
            "the pipeline declares no hosts",
            Some("declare at least one host under `hosts:`, e.g. `hosts: { web: {} }`".to_owned()),
        );
    }
    let roles: Vec<String> = raw.iter().map(|(role, _)| role.clone()).collect();
    let mut hosts = Vec::new();
    for (role, host) in raw {
        let path = hosts_path.key(&role);
        if !is_role(&role) {
            report.key(
                &path,
                &format!("invalid host role `{role}`"),
                Some(format!(
                    "a role is lowercase letters, digits and `-`, starts with a letter or digit, and has at most \
                        {MAX_NAME_LEN} characters (e.g. `db`, `web-1`)"
                )),
            );
        }
        let setup_timeout = check_timeout(host.timeout.as_deref(), &path.key("timeout"), report);
        let setup = host.setup.map(|script| script.0).filter(|script| !script.trim().is_empty());
        let secrets = check_secrets(host.secrets, &path.key("secrets"), report);
        hosts.push(HostDef { role, image: host.image, size: host.size, setup, setup_timeout, secrets });
    }
    (hosts, roles)
}

/// The declared host roles, to check references against.
pub(super) struct HostRefs<'a> {
    pub(super) roles: &'a [String],
}

impl HostRefs<'_> {
    /// Report `role` (written at `path`, in the field `field`) when no host declares it.
    pub(super) fn check(&self, role: &str, path: &KeyPath, field: &str, report: &mut Report<'_>) -> bool {
        if self.roles.iter().any(|r| r == role) {
            return true;
        }
        let hint = match closest(role, self.roles.iter().map(String::as_str)) {
            Some(suggestion) => format!("did you mean `{suggestion}`? Or declare `{role}` under `hosts:`"),
            None if self.roles.is_empty() => format!("declare `{role}` under `hosts:`"),
            None => {
                format!("declare `{role}` under `hosts:` (declared: {})", list(self.roles.iter().map(String::as_str)))
            }
        };
        report.value(path, &format!("{field} names host `{role}`, which is not declared"), Some(hint));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn a_stage_on_an_undeclared_host_is_refused() {
        let mut text = MINIMAL.to_vec();
        text[5] = "    host: database";
        assert_eq!(
            problems(&file(&text), &no_files()),
            ["6:11: stage `unit` names host `database`, which is not declared"]
        );
        assert_eq!(only_hint(&file(&text), &no_files()), "declare `database` under `hosts:` (declared: `web`)");
    }
}
