//! The admin API: JSON over HTTP, signed with an administrator key (see
//! `lauscha_core::admin_auth`). The CLI and a web console use it; each later feature
//! (tenants, keys, nodes, volumes) adds its routes here.

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use lauscha_core::AccessKeyId;
use lauscha_core::admin_auth;
use serde::Serialize;
use tracing::warn;

use crate::gateway::Inner;
use crate::http::full;
use crate::s3::now_ms;

/// An error as JSON: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    full(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => full(StatusCode::OK, "application/json", body),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Checks the request's signature and that its key is an administrator's.
async fn authorize(inner: &Inner, parts: &Parts, body: &[u8]) -> Result<(), Response<Full<Bytes>>> {
    let unauthorized = |m: &str| json_error(StatusCode::UNAUTHORIZED, m);
    let authorization = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized("missing Authorization header; the lauscha CLI signs requests")
        })?;
    let date: u64 = parts
        .headers
        .get(admin_auth::DATE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| unauthorized("missing or invalid x-lauscha-date header"))?;
    let key_id = admin_auth::key_id(authorization)
        .ok_or_else(|| unauthorized("malformed Authorization header"))?;
    let key = inner
        .access_key(&AccessKeyId(key_id.to_string()))
        .await
        .map_err(|_| unauthorized("unknown access key"))?;
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if !admin_auth::verify(
        authorization,
        &key.secret,
        parts.method.as_str(),
        path_and_query,
        date,
        now_ms() / 1000,
        body,
    ) {
        return Err(unauthorized(
            "signature does not match (or the clock differs by more than 5 minutes)",
        ));
    }
    if !key.is_admin {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "this key is not an administrator key",
        ));
    }
    Ok(())
}

/// Cluster status as the CLI prints it.
#[derive(Serialize)]
pub struct ClusterStatus {
    /// The metadata voter the gateway talks to.
    pub metadata: MetadataStatus,
    /// Every storage node in the map.
    pub nodes: Vec<NodeStatus>,
}

/// Raft state of a voter.
#[derive(Serialize)]
pub struct MetadataStatus {
    /// The voter's id.
    pub node_id: u64,
    /// The leader it knows.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last applied log index.
    pub last_applied_index: u64,
    /// Its role.
    pub state: String,
    /// Voters of the current membership.
    pub voters: Vec<u64>,
}

/// One storage node.
#[derive(Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: u32,
    /// Site.
    pub site: String,
    /// Host.
    pub host: String,
    /// gRPC address.
    pub addr: String,
    /// State in the map.
    pub state: String,
    /// Placement weight.
    pub capacity_bytes: u64,
    /// Whether it answered just now.
    pub reachable: bool,
    /// Shards held, if it answered.
    pub n_shards: Option<u64>,
    /// Bytes used, if it answered.
    pub used_bytes: Option<u64>,
}

async fn status(inner: &Inner) -> Result<ClusterStatus, String> {
    let meta = inner.meta.status().await.map_err(|e| e.to_string())?;
    let map = inner.nodes.cluster_map().await.map_err(|e| e.to_string())?;
    let probes = map.nodes.values().map(|node| {
        let map = map.clone();
        async move {
            let usage = inner.nodes.node_status(&map, node.id).await;
            NodeStatus {
                id: node.id.0,
                site: node.site.clone(),
                host: node.host.clone(),
                addr: node.addr.clone(),
                state: node.state.as_str().to_string(),
                capacity_bytes: node.capacity_bytes,
                reachable: usage.is_ok(),
                n_shards: usage.as_ref().ok().map(|u| u.n_shards),
                used_bytes: usage.as_ref().ok().map(|u| u.used_bytes),
            }
        }
    });
    Ok(ClusterStatus {
        metadata: meta,
        nodes: futures::future::join_all(probes).await,
    })
}

/// Routes one admin request.
pub async fn handle(inner: &Inner, parts: Parts, body: Bytes) -> Response<Full<Bytes>> {
    if parts.method == Method::GET && parts.uri.path() == "/health" {
        return full(StatusCode::OK, "text/plain", "ok\n");
    }
    if let Err(response) = authorize(inner, &parts, &body).await {
        return response;
    }
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/v1/status") => match status(inner).await {
            Ok(s) => json(&s),
            Err(e) => {
                warn!(error = %e, "admin status failed");
                json_error(StatusCode::SERVICE_UNAVAILABLE, &e)
            }
        },
        _ => json_error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}
