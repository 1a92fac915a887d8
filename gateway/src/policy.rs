//! Bucket policies: the subset of the AWS policy language Lauscha evaluates.
//!
//! A policy is a list of statements, each `Allow` or `Deny` for principals (access key
//! ids, or `*` for everyone including anonymous requests), actions (`s3:GetObject`,
//! `s3:PutObject`, `s3:DeleteObject`, `s3:ListBucket`, with `*` wildcards) and resources
//! (`arn:aws:s3:::bucket` and `arn:aws:s3:::bucket/prefix*`). Conditions, `NotAction`,
//! `NotPrincipal` and `NotResource` are refused when the policy is stored, so a policy
//! never means less than it says.
//!
//! Evaluation as in AWS: an explicit Deny wins over everything, the bucket owner's keys
//! are allowed without a statement, anyone else needs an explicit Allow. Pure: parsed
//! and evaluated without I/O.

use lauscha_core::BucketName;
use serde_json::Value;

/// The actions a policy can govern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// GetObject, HeadObject.
    GetObject,
    /// PutObject.
    PutObject,
    /// DeleteObject.
    DeleteObject,
    /// ListObjects, ListObjectsV2.
    ListBucket,
}

impl Action {
    /// The IAM name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::GetObject => "s3:GetObject",
            Action::PutObject => "s3:PutObject",
            Action::DeleteObject => "s3:DeleteObject",
            Action::ListBucket => "s3:ListBucket",
        }
    }
}

const KNOWN_ACTIONS: [Action; 4] = [
    Action::GetObject,
    Action::PutObject,
    Action::DeleteObject,
    Action::ListBucket,
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Principals {
    Everyone,
    Keys(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Statement {
    allow: bool,
    principals: Principals,
    actions: Vec<String>,
    resources: Vec<String>,
}

/// A parsed bucket policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketPolicy {
    statements: Vec<Statement>,
}

/// What a policy says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An Allow statement matches and no Deny does.
    Allow,
    /// A Deny statement matches.
    Deny,
    /// No statement matches.
    Silent,
}

/// Largest policy document (as S3: 20 KiB).
pub const MAX_POLICY_BYTES: usize = 20 * 1024;

/// `*` matches any run of characters, everything else itself.
fn glob(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    value.ends_with(last)
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>, String> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{what} must be strings"))
            })
            .collect(),
        _ => Err(format!("{what} must be a string or a list of strings")),
    }
}

impl BucketPolicy {
    /// Parses and checks a policy for `bucket`.
    pub fn parse(bucket: &BucketName, text: &str) -> Result<BucketPolicy, String> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(format!("the policy has more than {MAX_POLICY_BYTES} bytes"));
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let statements = match doc.get("Statement") {
            Some(Value::Array(s)) => s.clone(),
            Some(s @ Value::Object(_)) => vec![s.clone()],
            _ => return Err("the policy needs a Statement list".into()),
        };
        if statements.is_empty() {
            return Err("the policy has no statements".into());
        }
        let mut parsed = Vec::with_capacity(statements.len());
        for st in &statements {
            let Value::Object(map) = st else {
                return Err("a statement must be an object".into());
            };
            for key in map.keys() {
                if !["Sid", "Effect", "Principal", "Action", "Resource"].contains(&key.as_str()) {
                    return Err(format!(
                        "statement element {key} is not supported (Lauscha evaluates Effect, Principal, Action and Resource)"
                    ));
                }
            }
            let allow = match map.get("Effect").and_then(Value::as_str) {
                Some("Allow") => true,
                Some("Deny") => false,
                _ => return Err("Effect must be Allow or Deny".into()),
            };
            let principals = match map.get("Principal") {
                Some(Value::String(s)) if s == "*" => Principals::Everyone,
                Some(Value::Object(p)) => match p.get("AWS") {
                    Some(v) => {
                        let keys = strings(v, "Principal.AWS")?;
                        if keys.iter().any(|k| k == "*") {
                            Principals::Everyone
                        } else {
                            Principals::Keys(keys)
                        }
                    }
                    None => {
                        return Err("Principal must be \"*\" or {\"AWS\": [access key ids]}".into());
                    }
                },
                _ => return Err("Principal must be \"*\" or {\"AWS\": [access key ids]}".into()),
            };
            let actions = strings(
                map.get("Action").ok_or("a statement needs an Action")?,
                "Action",
            )?;
            for a in &actions {
                if !KNOWN_ACTIONS.iter().any(|k| glob(a, k.as_str())) {
                    return Err(format!(
                        "action {a} is not supported; use s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket (or a wildcard)"
                    ));
                }
            }
            let resources = strings(
                map.get("Resource").ok_or("a statement needs a Resource")?,
                "Resource",
            )?;
            let arn = format!("arn:aws:s3:::{bucket}");
            for r in &resources {
                if !(r == &arn || r.starts_with(&format!("{arn}/"))) {
                    return Err(format!("resource {r} is not in bucket {bucket} ({arn}...)"));
                }
            }
            parsed.push(Statement {
                allow,
                principals,
                actions,
                resources,
            });
        }
        Ok(BucketPolicy { statements: parsed })
    }

    /// What the policy says about `principal` (an access key id, `None` for anonymous)
    /// doing `action` on `bucket` (and `key`, for object actions).
    pub fn evaluate(
        &self,
        principal: Option<&str>,
        action: Action,
        bucket: &BucketName,
        key: Option<&str>,
    ) -> Decision {
        let resource = match key {
            Some(k) => format!("arn:aws:s3:::{bucket}/{k}"),
            None => format!("arn:aws:s3:::{bucket}"),
        };
        let mut decision = Decision::Silent;
        for st in &self.statements {
            let who = match &st.principals {
                Principals::Everyone => true,
                Principals::Keys(keys) => principal.is_some_and(|p| keys.iter().any(|k| k == p)),
            };
            if who
                && st.actions.iter().any(|a| glob(a, action.as_str()))
                && st.resources.iter().any(|r| glob(r, &resource))
            {
                if !st.allow {
                    return Decision::Deny;
                }
                decision = Decision::Allow;
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> BucketName {
        BucketName::parse("pub").unwrap()
    }

    #[test]
    fn glob_matches_runs() {
        assert!(glob("s3:*", "s3:GetObject"));
        assert!(glob("s3:Get*", "s3:GetObject"));
        assert!(!glob("s3:Put*", "s3:GetObject"));
        assert!(glob("arn:aws:s3:::pub/docs/*", "arn:aws:s3:::pub/docs/a/b"));
        assert!(!glob("arn:aws:s3:::pub/docs/*", "arn:aws:s3:::pub/doc"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXcYYb"));
    }

    #[test]
    fn anonymous_read_of_a_prefix_and_an_explicit_deny() {
        let text = r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::pub/public/*"},
            {"Effect":"Deny","Principal":{"AWS":["AKBAD"]},"Action":"s3:*","Resource":["arn:aws:s3:::pub","arn:aws:s3:::pub/*"]}
        ]}"#;
        let p = BucketPolicy::parse(&b(), text).unwrap();
        assert_eq!(
            p.evaluate(None, Action::GetObject, &b(), Some("public/x")),
            Decision::Allow
        );
        assert_eq!(
            p.evaluate(None, Action::GetObject, &b(), Some("private/x")),
            Decision::Silent
        );
        assert_eq!(
            p.evaluate(None, Action::PutObject, &b(), Some("public/x")),
            Decision::Silent
        );
        assert_eq!(
            p.evaluate(Some("AKBAD"), Action::GetObject, &b(), Some("public/x")),
            Decision::Deny
        );
        assert_eq!(
            p.evaluate(Some("AKBAD"), Action::ListBucket, &b(), None),
            Decision::Deny
        );
    }

    #[test]
    fn policies_outside_the_subset_are_refused() {
        for text in [
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::other/*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:PutBucketPolicy","Resource":"arn:aws:s3:::pub"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::pub/*","Condition":{}}]}"#,
            r#"{"Statement":[]}"#,
            "not json",
        ] {
            assert!(BucketPolicy::parse(&b(), text).is_err(), "{text}");
        }
    }
}
