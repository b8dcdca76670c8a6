//! Checks a recorded commit-status request against its forge's own published description,
//! vendored in `tests/fixtures/forge-api/` (its README says where each came from): the method and
//! the path (against the description's path template, every required path parameter present),
//! the body (GitHub: JSON Schema of the request body; Gitea/Forgejo: the `CreateStatusOption`
//! definition; GitLab: the attribute table), the allowed `state` values, and the authentication
//! header the description prescribes.

use serde_json::Value;

use crate::forge_standin::Recorded;
use crate::helpers::workspace_path;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(workspace_path(&format!("tests/fixtures/forge-api/{name}"))).unwrap()
}

fn json_fixture(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// Match `path` against an OpenAPI-style template (`{name}`, GitLab's `:name`); the path
/// parameters by name, or `None` when it does not match.
fn match_template(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let (template, path): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    if template.len() != path.len() {
        return None;
    }
    let mut params = Vec::new();
    for (t, p) in template.iter().zip(&path) {
        let name = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')).or_else(|| t.strip_prefix(':'));
        match name {
            Some(name) if !p.is_empty() => params.push((name.to_string(), (*p).to_string())),
            Some(_) => return None,
            None if t == p => {}
            None => return None,
        }
    }
    Some(params)
}

fn validate(schema: &Value, body: &Value) -> Vec<String> {
    let validator = jsonschema::draft7::new(schema).unwrap();
    validator.iter_errors(body).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// `request.path` below the API base's own path `base` (e.g. `/github`).
fn below<'a>(request: &'a Recorded, base: &str) -> &'a str {
    request.path.strip_prefix(base).unwrap_or_else(|| panic!("{} is not below {base}", request.path))
}

/// GitHub: `repos/create-commit-status` of api.github.com's OpenAPI description.
pub fn check_github(request: &Recorded, base: &str, token: &str) {
    let description = json_fixture("github-create-commit-status.json");
    let (template, item) = description["paths"].as_object().unwrap().iter().next().unwrap();
    let operation = &item[request.method.to_lowercase()];
    assert!(operation.is_object(), "GitHub describes no {} on {template}", request.method);
    let params = match_template(template, below(request, base))
        .unwrap_or_else(|| panic!("{} does not match {template}", request.path));
    for param in operation["parameters"].as_array().unwrap() {
        let param = match param["$ref"].as_str() {
            Some(pointer) => description.pointer(pointer.trim_start_matches('#')).unwrap(),
            None => param,
        };
        if param["in"] == "path" && param["required"] == true {
            let name = param["name"].as_str().unwrap();
            assert!(params.iter().any(|(n, v)| n == name && !v.is_empty()), "path parameter {name} missing");
        }
    }
    let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
    let errors = validate(schema, &request.body);
    assert!(errors.is_empty(), "GitHub's schema refuses {}: {errors:?}", request.body);
    let states: Vec<&str> =
        schema["properties"]["state"]["enum"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(states.contains(&request.state()), "state {} is not one of {states:?}", request.state());
    // "sending the token in the `Authorization` header ... `Authorization: Bearer YOUR-TOKEN`"
    let auth = fixture("github-authentication.md");
    assert!(auth.contains("--header \"Authorization: Bearer YOUR-TOKEN\""), "the vendored docs changed");
    assert_eq!(request.header("authorization"), Some(format!("Bearer {token}").as_str()));
    assert!(auth.contains("X-GitHub-Api-Version"));
    assert!(request.header("x-github-api-version").is_some_and(|v| !v.is_empty()), "no X-GitHub-Api-Version");
}

/// Gitea and Forgejo: `repoCreateStatus` of Gitea's swagger description.
pub fn check_gitea(request: &Recorded, base: &str, token: &str) {
    let description = json_fixture("gitea-create-commit-status.json");
    let base_path = description["basePath"].as_str().unwrap();
    // The template's `{{AppSubUrl ...}}` is the server's sub-path: the API base covers it.
    let base_path = &base_path[base_path.find("}}").map_or(0, |i| i + 2)..];
    let (template, item) = description["paths"].as_object().unwrap().iter().next().unwrap();
    let operation = &item[request.method.to_lowercase()];
    assert!(operation.is_object(), "Gitea describes no {} on {template}", request.method);
    let path = below(request, base);
    let path = path.strip_prefix(base_path).unwrap_or_else(|| panic!("{path} is not below {base_path}"));
    let params = match_template(template, path).unwrap_or_else(|| panic!("{path} does not match {template}"));
    let mut body_schema = None;
    for param in operation["parameters"].as_array().unwrap() {
        match param["in"].as_str() {
            Some("path") if param["required"] == true => {
                let name = param["name"].as_str().unwrap();
                assert!(params.iter().any(|(n, _)| n == name), "path parameter {name} missing");
            }
            Some("body") => body_schema = Some(param["schema"].clone()),
            _ => {}
        }
    }
    let mut schema = body_schema.expect("a body parameter");
    schema["definitions"] = description["definitions"].clone();
    let errors = validate(&schema, &request.body);
    assert!(errors.is_empty(), "Gitea's schema refuses {}: {errors:?}", request.body);
    // `CommitStatusState` lists its values in its description: "It can be "pending", ...".
    let state_doc = description["definitions"]["CommitStatusState"]["description"].as_str().unwrap();
    let states: Vec<&str> = state_doc.split('"').skip(1).step_by(2).collect();
    assert!(states.contains(&request.state()), "state {} is not one of {states:?}", request.state());
    let scheme = &description["securityDefinitions"]["AuthorizationHeaderToken"];
    assert_eq!((scheme["in"].as_str(), scheme["name"].as_str()), (Some("header"), Some("Authorization")));
    assert!(scheme["description"].as_str().unwrap().contains("prepended with \"token\" followed by a space"));
    assert_eq!(request.header("authorization"), Some(format!("token {token}").as_str()));
}

/// GitLab: "Set commit pipeline status" of GitLab's REST documentation.
pub fn check_gitlab(request: &Recorded, base: &str, token: &str) {
    let doc = fixture("gitlab-set-commit-pipeline-status.md");
    let endpoint = doc.lines().find(|l| l.starts_with("POST /projects/")).expect("the endpoint line");
    let (method, template) = endpoint.split_once(' ').unwrap();
    assert_eq!(request.method, method);
    let params = match_template(template, below(request, base))
        .unwrap_or_else(|| panic!("{} does not match {template}", request.path));
    let mut required = Vec::new();
    let mut states = Vec::new();
    // The request's attribute table: | attribute | type | required | description |.
    for row in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() != 6 {
            continue;
        }
        let names: Vec<&str> = cells[1].split('`').skip(1).step_by(2).collect();
        if names == ["state"] {
            states = cells[4].split('`').skip(1).step_by(2).map(str::to_string).collect();
        }
        if cells[3] == "Yes" {
            required.push(names);
        }
    }
    assert!(!states.is_empty() && !required.is_empty(), "the vendored table changed");
    for names in &required {
        let in_path = names.iter().any(|n| params.iter().any(|(p, _)| p == n));
        let in_body = names.iter().any(|n| request.body.get(*n).is_some());
        assert!(in_path || in_body, "required attribute {names:?} missing from {} {}", request.path, request.body);
    }
    // `id` is "The ID or URL-encoded path of the project": one segment.
    let id = &params.iter().find(|(n, _)| n == "id").unwrap().1;
    assert!(!id.contains('/'), "the project's path is not URL-encoded: {id}");
    assert!(states.iter().any(|s| s == request.state()), "state {} is not one of {states:?}", request.state());
    assert!(doc.contains("--header \"PRIVATE-TOKEN: <your_access_token>\""), "the vendored docs changed");
    assert_eq!(request.header("private-token"), Some(token));
}
