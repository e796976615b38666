//! CEL validation rules of custom resource schemas (`x-kubernetes-validations`), evaluated
//! with the `cel` crate (cel-rust) as apiextensions-apiserver evaluates them with cel-go:
//! `self` is the value at the rule's node, `oldSelf` the value it replaces on an update. A
//! rule that names `oldSelf` is a transition rule and runs only on updates, where the old
//! value exists at the same place.
//!
//! Compiling checks the syntax (a rule that does not compile makes the definition invalid);
//! Kubernetes' type checking and cost estimates have no counterpart here, so rules and
//! their number are bounded instead, and an evaluation error is reported as the rule failing.

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
use serde_json::Value;

use crate::apiserver::error::FieldError;

/// The longest rule or message expression accepted.
pub const MAX_RULE_BYTES: usize = 4096;

/// The most rules one schema may carry in all.
pub const MAX_RULES: usize = 256;

/// A compiled rule.
#[derive(Clone)]
pub struct Rule {
    source: String,
    program: Arc<cel::Program>,
    message: Option<String>,
    message_expression: Option<Arc<cel::Program>>,
    reason: &'static str,
    field_path: Option<String>,
    /// Whether the rule compares with `oldSelf`.
    pub transition: bool,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("source", &self.source)
            .finish()
    }
}

fn compile_one(source: &str, field: &str, errs: &mut Vec<FieldError>) -> Option<cel::Program> {
    if source.len() > MAX_RULE_BYTES {
        errs.push(FieldError {
            reason: "FieldValueTooLong",
            field: field.to_owned(),
            message: format!("Too long: may not be more than {MAX_RULE_BYTES} bytes"),
        });
        return None;
    }
    match cel::Program::compile(source) {
        Ok(p) => Some(p),
        Err(e) => {
            errs.push(FieldError::invalid(
                field,
                source,
                format!(
                    "compilation failed: {}",
                    e.to_string().lines().next().unwrap_or("")
                ),
            ));
            None
        }
    }
}

/// Compiles the rules of the node at `path`; every problem goes to `errs`.
pub fn compile(rules: &[ValidationRule], path: &str, errs: &mut Vec<FieldError>) -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let at = format!("{path}.x-kubernetes-validations[{i}]");
        let program = compile_one(&r.rule, &format!("{at}.rule"), errs);
        let message_expression = r
            .message_expression
            .as_deref()
            .and_then(|m| compile_one(m, &format!("{at}.messageExpression"), errs));
        let reason = match r.reason.as_deref() {
            None | Some("FieldValueInvalid") => "FieldValueInvalid",
            Some("FieldValueForbidden") => "FieldValueForbidden",
            Some("FieldValueRequired") => "FieldValueRequired",
            Some("FieldValueDuplicate") => "FieldValueDuplicate",
            Some(other) => {
                errs.push(FieldError {
                    reason: "FieldValueNotSupported",
                    field: format!("{at}.reason"),
                    message: format!("Unsupported value: {other:?}: supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\""),
                });
                "FieldValueInvalid"
            }
        };
        if let Some(message) = &r.message {
            if message.trim().is_empty() || message.contains('\n') {
                errs.push(FieldError::invalid(
                    format!("{at}.message"),
                    message,
                    "must be non-empty and not contain line breaks",
                ));
            }
        }
        if let Some(program) = program {
            let transition = program.references().has_variable("oldSelf");
            out.push(Rule {
                source: r.rule.clone(),
                program: Arc::new(program),
                message: r.message.clone(),
                message_expression: message_expression.map(Arc::new),
                reason,
                field_path: r.field_path.clone(),
                transition,
            });
        }
    }
    out
}

fn context(new: &Value, old: Option<&Value>) -> Option<cel::Context<'static, 'static>> {
    let mut ctx = cel::Context::default();
    ctx.add_variable("self", new).ok()?;
    if let Some(old) = old {
        ctx.add_variable("oldSelf", old).ok()?;
    }
    Some(ctx)
}

/// Evaluates `rules` on `new` (and `old` for transition rules, which run only with it),
/// reporting each failure at `path` with the schema type name as Kubernetes does.
pub fn check(
    rules: &[Rule],
    type_name: &str,
    new: &Value,
    old: Option<&Value>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    for rule in rules {
        if rule.transition != old.is_some() {
            continue;
        }
        let Some(ctx) = context(new, old) else {
            continue;
        };
        let passed = matches!(rule.program.execute(&ctx), Ok(cel::Value::Bool(true)));
        if passed {
            continue;
        }
        let message = rule
            .message_expression
            .as_ref()
            .and_then(|m| match m.execute(&ctx) {
                Ok(cel::Value::String(s)) if !s.trim().is_empty() => Some(s.to_string()),
                _ => None,
            })
            .or_else(|| rule.message.clone())
            .unwrap_or_else(|| format!("failed rule: {}", rule.source));
        let field = match &rule.field_path {
            Some(p) if path.is_empty() => p.trim_start_matches('.').to_owned(),
            Some(p) => format!("{path}{p}"),
            None => path.to_owned(),
        };
        let message = match rule.reason {
            "FieldValueForbidden" => format!("Forbidden: {message}"),
            "FieldValueRequired" => format!("Required value: {message}"),
            "FieldValueDuplicate" => format!("Duplicate value: {message}"),
            _ => format!("Invalid value: {type_name:?}: {message}"),
        };
        errs.push(FieldError {
            reason: rule.reason,
            field,
            message,
        });
    }
}
