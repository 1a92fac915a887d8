//! CORS for browser clients: preflight (`OPTIONS`) answered from the bucket's rules, and
//! the `Access-Control-*` headers added to the responses of requests that carry `Origin`.
//! Rules come from the gateway's short-lived settings cache.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use lauscha_core::BucketName;
use lauscha_core::versioning::CorsRule;
use s3s::{Body, S3Error, S3ErrorCode};

use crate::gateway::Inner;

/// The bucket a path-style request addresses.
pub fn bucket_of_path(path: &str) -> Option<BucketName> {
    let first = path.trim_start_matches('/').split('/').next()?;
    BucketName::parse(first).ok()
}

/// The first rule allowing `origin`, `method` and `request_headers` (lower-case).
pub fn matching_rule<'a>(
    rules: &'a [CorsRule],
    origin: &str,
    method: &str,
    request_headers: &[String],
) -> Option<&'a CorsRule> {
    rules
        .iter()
        .find(|r| r.allows(origin, method, request_headers))
}

/// Sets the response headers a matching rule grants.
pub fn grant(
    headers: &mut HeaderMap,
    rule: &CorsRule,
    origin: &str,
    preflight: Option<(&str, &[String])>,
) {
    let any = rule.allowed_origins.iter().any(|o| o == "*");
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(
        "access-control-allow-origin",
        if any { "*".into() } else { origin.to_string() },
    );
    if !any {
        set("vary", "Origin".into());
    }
    if !rule.expose_headers.is_empty() {
        set(
            "access-control-expose-headers",
            rule.expose_headers.join(", "),
        );
    }
    if let Some((method, request_headers)) = preflight {
        set("access-control-allow-methods", method.to_string());
        if !request_headers.is_empty() {
            set("access-control-allow-headers", request_headers.join(", "));
        }
        if let Some(age) = rule.max_age_s {
            set("access-control-max-age", age.to_string());
        }
    }
}

fn forbidden(message: &str) -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("AccessForbidden".into()),
        message.to_string(),
    );
    e.set_status_code(StatusCode::FORBIDDEN);
    e
}

/// Answers a preflight request; `Err` is the S3 error to send.
pub async fn preflight(
    inner: &Inner,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, S3Error> {
    let origin = headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| forbidden("CORSResponse: the preflight request has no Origin header"))?;
    let method = headers
        .get("access-control-request-method")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            forbidden(
                "CORSResponse: the preflight request has no Access-Control-Request-Method header",
            )
        })?;
    let request_headers: Vec<String> = headers
        .get("access-control-request-headers")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let bucket =
        bucket_of_path(path).ok_or_else(|| forbidden("CORSResponse: no bucket in the request"))?;
    let view = inner.bucket_view(&bucket).await.map_err(S3Error::from)?;
    let rules = view
        .settings
        .cors
        .as_deref()
        .ok_or_else(|| forbidden("CORSResponse: this bucket has no CORS configuration"))?;
    let rule = matching_rule(rules, origin, method, &request_headers)
        .ok_or_else(|| forbidden("CORSResponse: this CORS request is not allowed"))?;
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .body(Body::empty())
        .expect("static response");
    grant(
        response.headers_mut(),
        rule,
        origin,
        Some((method, &request_headers)),
    );
    Ok(response)
}

/// Adds CORS headers to the response of an actual (non-preflight) cross-origin request.
pub async fn decorate(
    inner: &Inner,
    path: &str,
    method: &Method,
    origin: &str,
    response: &mut Response<Body>,
) {
    let Some(bucket) = bucket_of_path(path) else {
        return;
    };
    // A bucket that cannot be read (missing, metadata unavailable) gets no CORS headers:
    // the browser then hides the response, which is the safe side.
    let Ok(view) = inner.bucket_view(&bucket).await else {
        return;
    };
    if let Some(rule) = view
        .settings
        .cors
        .as_deref()
        .and_then(|rules| matching_rule(rules, origin, method.as_str(), &[]))
    {
        grant(response.headers_mut(), rule, origin, None);
    }
}
