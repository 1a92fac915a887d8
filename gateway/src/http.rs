//! The HTTP servers: S3 (through s3s) and the admin API, on hyper.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::service::S3Service;
use s3s::{Body, S3Error, S3ErrorCode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info_span, warn};

use crate::admin;
use crate::auth::{Refusal, precheck};
use crate::gateway::Inner;

/// How long a request waits for a slot before it is refused with SlowDown.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin request body.
const MAX_ADMIN_BODY_BYTES: usize = 1 << 20;

fn s3_error_response(error: S3Error, request_id: &str) -> Response<Body> {
    let mut error = error;
    error.set_request_id(request_id.to_string());
    match error.to_http_response() {
        Ok(response) => response,
        Err(e) => {
            warn!(error = %e, "failed to serialise an S3 error");
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Body::empty())
                .expect("static response")
        }
    }
}

fn refusal_error(refusal: Refusal, region: &str) -> S3Error {
    match refusal {
        Refusal::SigV2 => S3Error::with_message(
            S3ErrorCode::AccessDenied,
            "signature version 2 is not accepted; sign requests with AWS Signature Version 4",
        ),
        Refusal::WrongRegion { got } => {
            let mut e = S3Error::with_message(
                S3ErrorCode::Custom("AuthorizationHeaderMalformed".into()),
                format!(
                    "the authorization header is malformed; the region '{got}' is wrong; expecting '{region}'"
                ),
            );
            e.set_status_code(StatusCode::BAD_REQUEST);
            e
        }
        Refusal::BadExpiry { got } => {
            let mut e = S3Error::with_message(
                S3ErrorCode::Custom("AuthorizationQueryParametersError".into()),
                format!(
                    "X-Amz-Expires must be a number of seconds from 1 to {} (a week), not '{got}'",
                    crate::auth::MAX_PRESIGNED_EXPIRY_S
                ),
            );
            e.set_status_code(StatusCode::BAD_REQUEST);
            e
        }
    }
}

/// Whether a request asks for `100 Continue` but declares no body, so that hyper will never
/// send the 100.
fn expects_continue_without_body<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        && headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
}

/// Serves S3 on `listener` until `shutdown` resolves.
pub async fn serve_s3(
    inner: Arc<Inner>,
    s3: S3Service,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(inner.config.max_concurrent_requests));
    serve(listener, shutdown, move |request: Request<Incoming>| {
        let (inner, s3, slots) = (inner.clone(), s3.clone(), slots.clone());
        async move {
            let request_id = format!("{:016x}", rand::random::<u64>());
            let span = info_span!("s3", request_id = %request_id, method = %request.method(), path = %request.uri().path());
            async move {
                let origin = request
                    .headers()
                    .get("origin")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let path = request.uri().path().to_string();
                let method = request.method().clone();
                if method == http::Method::OPTIONS && origin.is_some() {
                    return match crate::cors::preflight(&inner, &path, request.headers()).await {
                        Ok(response) => response,
                        Err(e) => s3_error_response(e, &request_id),
                    };
                }
                let authorization = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                match precheck(authorization, request.uri().query(), &inner.config.region) {
                    Ok(()) => {}
                    Err(Refusal::SigV2) if inner.config.allow_sigv2 => {}
                    Err(refusal) => {
                        return s3_error_response(refusal_error(refusal, &inner.config.region), &request_id);
                    }
                }
                // botocore sends `Expect: 100-continue` even with an empty body. hyper then
                // answers with the final status and no 100 (RFC 9110 allows it), which
                // leaves botocore's connection believing every later response starts with
                // that status. Closing such a connection resets the client's state.
                let close_after = expects_continue_without_body(&request);
                let permit = match tokio::time::timeout(QUEUE_TIMEOUT, slots.acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        return s3_error_response(
                            S3Error::with_message(S3ErrorCode::SlowDown, "too many requests; retry later"),
                            &request_id,
                        );
                    }
                };
                let mut response = match s3.call(request.map(Body::from)).await {
                    Ok(response) => response,
                    Err(e) => {
                        warn!(error = ?e, "S3 request failed");
                        s3_error_response(S3Error::new(S3ErrorCode::InternalError), &request_id)
                    }
                };
                if response.status().is_server_error() {
                    warn!(status = %response.status(), "S3 request answered with a server error");
                } else {
                    debug!(status = %response.status(), "S3 request done");
                }
                if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert("x-amz-request-id", value);
                }
                if let Some(origin) = &origin {
                    crate::cors::decorate(&inner, &path, &method, origin, &mut response).await;
                }
                if close_after {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                drop(permit);
                response
            }
            .instrument(span)
            .await
        }
    })
    .await
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve_admin(
    inner: Arc<Inner>,
    maintenance: Arc<crate::maintenance::Maintenance>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(listener, shutdown, move |request: Request<Incoming>| {
        let (inner, maintenance) = (inner.clone(), maintenance.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = match Limited::new(body, MAX_ADMIN_BODY_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return admin::json_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                    );
                }
            };
            admin::handle(&inner, &maintenance, parts, body).await
        }
    })
    .await
}

/// Accepts connections and serves each with `handler`, HTTP/1.1 and HTTP/2.
async fn serve<F, Fut, B>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    handler: F,
) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = ConnBuilder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            warn!("connections still open after 10 s; closing them");
        }
    }
    Ok(())
}

/// A full-body response.
pub fn full(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid static response")
}
