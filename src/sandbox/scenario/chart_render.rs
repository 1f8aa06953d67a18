//! What `helm install` does with a chart's templates, for the charts the sandbox seeds
//! (aws-calico 0.3.10 and 0.3.11, `data/aws-calico-*/`): the Go-template subset those
//! templates use, Sprig's `toYaml`/`indent`/`nindent`, and how Helm cuts the rendered
//! files into the release manifest.
//!
//! The subset: text; actions with `{{-`/`-}}` trimming; comments; `if`/`with`/`else`/`end`
//! (Go's truth: false, 0, nil and empty strings, maps and lists are false; an `if` may
//! also test `eq`/`ne` of a field and a quoted string); `define`
//! blocks (skipped: the chart's helpers are given by the caller as `include` results);
//! pipelines of `include "NAME" .`, `toYaml X`, a field (`.Values.a.b`,
//! `.Release.Namespace`, `.`), then `indent N`, `nindent N` or `quote`. Anything else
//! is an error, so a template outside the subset fails instead of rendering wrong.

use std::collections::BTreeMap;

use serde_json::Value;

/// One action or run of text, trimming already applied (text/template/parse/lex.go:
/// `{{- ` trims the whitespace before, ` -}}` the whitespace after).
#[derive(Debug)]
enum Token {
    Text(String),
    Action(String),
}

fn tokenize(src: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while !rest.is_empty() {
        let (text, after) = match rest.find("{{") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        let mut text = if trim_next { text.trim_start() } else { text };
        let Some(after) = after else {
            out.push(Token::Text(text.to_string()));
            break;
        };
        let (trim_left, body_start) = match after.strip_prefix("- ") {
            Some(b) => (true, b),
            None => (false, after),
        };
        if trim_left {
            text = text.trim_end();
        }
        out.push(Token::Text(text.to_string()));
        let close = body_start
            .find("}}")
            .ok_or_else(|| "an action is not closed with }}".to_string())?;
        let mut body = &body_start[..close];
        trim_next = false;
        if let Some(b) = body.strip_suffix(" -") {
            body = b;
            trim_next = true;
        }
        out.push(Token::Action(body.trim().to_string()));
        rest = &body_start[close + 2..];
    }
    Ok(out)
}

#[derive(Debug)]
enum Node {
    Text(String),
    Expr(String),
    If {
        cond: String,
        with: bool,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// Nodes up to the `end`/`else` that closes the current block; returns which closed it.
fn parse(tokens: &mut std::vec::IntoIter<Token>) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while let Some(t) = tokens.next() {
        match t {
            Token::Text(s) => nodes.push(Node::Text(s)),
            Token::Action(a) if a.starts_with("/*") => {}
            Token::Action(a) if a == "end" || a == "else" => return Ok((nodes, Some(a))),
            Token::Action(a) if a.starts_with("define ") => {
                // A named template: its body is the caller's `include` result.
                let (_, close) = parse(tokens)?;
                if close.as_deref() != Some("end") {
                    return Err(format!("{{{{{a}}}}} has no {{{{end}}}}"));
                }
            }
            Token::Action(a) => {
                let block = a
                    .strip_prefix("if ")
                    .map(|c| (c, false))
                    .or_else(|| a.strip_prefix("with ").map(|c| (c, true)));
                match block {
                    Some((cond, with)) => {
                        let (then, close) = parse(tokens)?;
                        let otherwise = match close.as_deref() {
                            Some("else") => {
                                let (o, c) = parse(tokens)?;
                                if c.as_deref() != Some("end") {
                                    return Err(format!("{{{{{a}}}}} has no {{{{end}}}}"));
                                }
                                o
                            }
                            Some("end") => Vec::new(),
                            _ => return Err(format!("{{{{{a}}}}} has no {{{{end}}}}")),
                        };
                        nodes.push(Node::If {
                            cond: cond.trim().to_string(),
                            with,
                            then,
                            otherwise,
                        });
                    }
                    None => nodes.push(Node::Expr(a)),
                }
            }
        }
    }
    Ok((nodes, None))
}

/// What a template sees: `.Values`, `.Release`, `.Chart`, and the chart's named
/// templates already rendered.
pub struct Context {
    pub root: Value,
    pub includes: BTreeMap<String, String>,
}

/// Go's truth for `if` and `with` (text/template/exec.go `isTrue`).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

fn lookup(ctx: &Context, dot: &Value, path: &str) -> Result<Value, String> {
    if path == "." {
        return Ok(dot.clone());
    }
    let Some(rest) = path.strip_prefix('.') else {
        return Err(format!("\"{path}\" is not a field"));
    };
    let mut cur = &ctx.root;
    for part in rest.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return Ok(Value::Null),
        }
    }
    Ok(cur.clone())
}

/// A value as text/template prints it (Helm renders a missing value as empty).
fn print(v: &Value) -> Result<String, String> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("{other} is not a scalar to print")),
    }
}

/// Sprig `indent`: every line prefixed by `n` spaces.
pub fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    format!("{pad}{}", s.replace('\n', &format!("\n{pad}")))
}

fn eval(ctx: &Context, dot: &Value, pipeline: &str) -> Result<String, String> {
    let mut value: Option<String> = None;
    for (i, cmd) in pipeline.split('|').map(str::trim).enumerate() {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let next = match (i, words.as_slice()) {
            (0, ["include", name, "."]) => {
                let name = name.trim_matches('"');
                ctx.includes
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("no template \"{name}\" to include"))?
            }
            (0, ["toYaml", arg]) => to_yaml(&lookup(ctx, dot, arg)?),
            (0, [field]) => print(&lookup(ctx, dot, field)?)?,
            (_, ["indent", n]) if i > 0 => indent(
                value.as_deref().unwrap_or_default(),
                n.parse().map_err(|_| format!("indent {n}"))?,
            ),
            (_, ["nindent", n]) if i > 0 => format!(
                "\n{}",
                indent(
                    value.as_deref().unwrap_or_default(),
                    n.parse().map_err(|_| format!("nindent {n}"))?
                )
            ),
            (_, ["quote"]) if i > 0 => format!("{:?}", value.as_deref().unwrap_or_default()),
            _ => {
                return Err(format!(
                    "\"{cmd}\" is outside the template subset rendered here"
                ));
            }
        };
        value = Some(next);
    }
    Ok(value.unwrap_or_default())
}

/// An `if` condition: a field, or `eq`/`ne` of two operands (text/template funcs.go
/// `eq`, `ne`). Comparing a missing value is an error there ("invalid type for
/// comparison"), and here.
fn condition(ctx: &Context, dot: &Value, cond: &str) -> Result<Value, String> {
    let words: Vec<&str> = cond.split_whitespace().collect();
    match words.as_slice() {
        [op @ ("eq" | "ne"), a, b] => {
            let same = operand(ctx, dot, a)? == operand(ctx, dot, b)?;
            Ok(Value::Bool(if *op == "eq" { same } else { !same }))
        }
        [field] => lookup(ctx, dot, field),
        _ => Err(format!(
            "\"if {cond}\" is outside the template subset rendered here"
        )),
    }
}

/// A quoted string literal or a field's value (which must be there).
fn operand(ctx: &Context, dot: &Value, word: &str) -> Result<Value, String> {
    if let Some(s) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        return Ok(Value::String(s.to_string()));
    }
    match lookup(ctx, dot, word)? {
        Value::Null => Err(format!("{word} has no value to compare")),
        v => Ok(v),
    }
}

fn exec(ctx: &Context, dot: &Value, nodes: &[Node], out: &mut String) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(s) => out.push_str(s),
            Node::Expr(e) => out.push_str(&eval(ctx, dot, e)?),
            Node::If {
                cond,
                with,
                then,
                otherwise,
            } => {
                let v = if *with {
                    lookup(ctx, dot, cond)?
                } else {
                    condition(ctx, dot, cond)?
                };
                if truthy(&v) {
                    exec(ctx, if *with { &v } else { dot }, then, out)?;
                } else {
                    exec(ctx, dot, otherwise, out)?;
                }
            }
        }
    }
    Ok(())
}

/// One template file rendered.
pub fn render(src: &str, ctx: &Context) -> Result<String, String> {
    let (nodes, close) = parse(&mut tokenize(src)?.into_iter())?;
    if let Some(c) = close {
        return Err(format!("{{{{{c}}}}} without a block to close"));
    }
    let mut out = String::new();
    exec(ctx, &ctx.root, &nodes, &mut out)?;
    Ok(out)
}

/// Whether a plain YAML 1.1 scalar would read back as something other than this
/// string (go-yaml v2 resolve.go): then the encoder double-quotes it.
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".inf", ".Inf", ".INF", "-.inf", "-.Inf", "-.INF", "+.inf", ".nan", ".NaN", ".NAN", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let t = s.replace('_', "");
    let t = t.strip_prefix(['+', '-']).unwrap_or(&t);
    t.parse::<f64>().is_ok()
        || t.strip_prefix("0x")
            .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
        || t.strip_prefix("0b")
            .is_some_and(|b| !b.is_empty() && b.chars().all(|c| c == '0' || c == '1'))
        // Base-60 numbers (1:20) are ints/floats in YAML 1.1.
        || (t.contains(':')
            && t.split(':').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit() || c == '.')))
}

/// Whether go-yaml's emitter may write `s` as a plain scalar (emitterc.go
/// `yaml_emitter_analyze_scalar`): no leading indicator, no ": " or " #", no edge spaces.
fn plain_allowed(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let second = s.chars().nth(1);
    let leading = match first {
        ',' | '[' | ']' | '{' | '}' | '#' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%'
        | '@' | '`' => true,
        '-' | '?' | ':' => second.is_none_or(|c| c == ' '),
        _ => false,
    };
    !(leading
        || s.starts_with(' ')
        || s.ends_with(' ')
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.chars().any(|c| c.is_control()))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.contains('\n') => {
            let body = s.strip_suffix('\n').unwrap_or(s);
            let chomp = if s.ends_with('\n') { "|" } else { "|-" };
            format!("{chomp}\n{}", indent(body, 2))
        }
        Value::String(s) if resolves_to_non_string(s) => format!("{s:?}"),
        Value::String(s) if plain_allowed(s) => s.clone(),
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
        _ => false,
    }
}

/// Helm's `toYaml`: sigs.k8s.io/yaml (go-yaml v2) output without its last newline.
/// Keys sorted, two-space indentation, sequences in a mapping not indented.
pub fn to_yaml(v: &Value) -> String {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            keys.iter()
                .map(|k| {
                    let key = scalar(&Value::String((*k).clone()));
                    let val = &m[*k];
                    match val {
                        Value::Object(_) if is_block(val) => {
                            format!("{key}:\n{}", indent(&to_yaml(val), 2))
                        }
                        Value::Array(_) if is_block(val) => format!("{key}:\n{}", to_yaml(val)),
                        _ => format!("{key}: {}", scalar(val)),
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|item| {
                if is_block(item) {
                    let inner = indent(&to_yaml(item), 2);
                    format!("- {}", &inner[2..])
                } else {
                    format!("- {}", scalar(item))
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => scalar(other),
    }
}

/// A rendered file cut into documents the way Helm cuts it (helm v3.17.3
/// pkg/releaseutil/manifest.go `SplitManifests`: split on `(?:^|\s*\n)---\s*`, each
/// piece trimmed, empty ones dropped).
pub fn split_manifests(text: &str) -> Vec<String> {
    let text = text.trim();
    let mut rest = text.strip_prefix("---").unwrap_or(text);
    let mut pieces = Vec::new();
    loop {
        match rest.find("\n---") {
            Some(i) => {
                pieces.push(&rest[..i]);
                rest = &rest[i + 4..];
            }
            None => {
                pieces.push(rest);
                break;
            }
        }
    }
    pieces
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Helm's install order by kind (helm v3.17.3 pkg/releaseutil/kind_sorter.go
/// `InstallOrder`).
pub const INSTALL_ORDER: &[&str] = &[
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// Where a kind goes in [`INSTALL_ORDER`]; unknown kinds after every known one,
/// alphabetically (kind_sorter.go `lessByKind`).
pub fn install_rank(kind: &str) -> (usize, String) {
    match INSTALL_ORDER.iter().position(|k| *k == kind) {
        Some(i) => (i, String::new()),
        None => (INSTALL_ORDER.len(), kind.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(values: Value) -> Context {
        Context {
            root: json!({"Values": values, "Release": {"Namespace": "ns"}}),
            includes: BTreeMap::from([("x.name".to_string(), "calico".to_string())]),
        }
    }

    #[test]
    fn trimming_blocks_and_pipelines_follow_go_templates() {
        let src = "a: \"{{ include \"x.name\" . }}-node\"\nb:\n  {{- toYaml .Values.m | nindent 2 }}\n{{- if .Values.e }}\nskip\n{{- end }}\n{{- with .Values.w }}\nw: {{- toYaml . | nindent 2 }}\n{{- end }}\nns: {{ .Release.Namespace }}\n";
        let out = render(
            src,
            &ctx(json!({"m": {"z": "1", "a": "x"}, "e": [], "w": {"k": "v"}})),
        )
        .unwrap();
        assert_eq!(
            out,
            "a: \"calico-node\"\nb:\n  a: x\n  z: \"1\"\nw:\n  k: v\nns: ns\n"
        );
        assert!(render("{{ printf \"%s\" .x }}", &ctx(json!({}))).is_err());
        assert!(render("{{ if .Values.a }}", &ctx(json!({}))).is_err());
        let v = json!({"p": "EKS"});
        let src = "{{- if eq .Values.p \"openshift\" }}\nos\n{{- end }}\n{{ if ne .Values.p \"openshift\" }}\nnot{{ end }}";
        assert_eq!(render(src, &ctx(v)).unwrap(), "\n\nnot");
        assert!(render("{{ if eq .Values.q \"x\" }}{{ end }}", &ctx(json!({}))).is_err());
    }

    #[test]
    fn to_yaml_writes_like_go_yaml_v2() {
        let v = json!([{"name": "A", "value": "false"}, {"name": "B", "value": "x: y"},
                       {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]);
        assert_eq!(
            to_yaml(&v),
            "- name: A\n  value: \"false\"\n- name: B\n  value: 'x: y'\n- name: C\n  valueFrom:\n    fieldRef:\n      fieldPath: spec.nodeName"
        );
        assert_eq!(
            to_yaml(&json!({"l": ["a", 1], "e": {}})),
            "e: {}\nl:\n- a\n- 1"
        );
    }

    #[test]
    fn documents_split_on_separator_lines() {
        let docs = split_manifests("# c\na: 1\n\n---\n\nb: 2\n---\n   \n---\nc: 3 --- x\n");
        assert_eq!(docs, ["# c\na: 1", "b: 2", "c: 3 --- x"]);
    }
}
