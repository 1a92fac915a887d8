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
    /// Every configured metadata voter.
    pub metadata: Vec<VoterStatus>,
    /// Every storage node in the map.
    pub nodes: Vec<NodeStatus>,
}

/// One metadata voter as it reports itself.
#[derive(Serialize)]
pub struct VoterStatus {
    /// The endpoint asked.
    pub endpoint: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Its id.
    pub node_id: Option<u64>,
    /// Leader, follower, candidate, learner.
    pub state: Option<String>,
    /// The leader it knows.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: Option<u64>,
    /// Last log index it has.
    pub last_log_index: Option<u64>,
    /// Last applied log index.
    pub last_applied_index: Option<u64>,
    /// Members of the membership it knows.
    pub members: Vec<MemberStatus>,
    /// Log appends (fsyncs) since its start.
    pub n_log_appends: Option<u64>,
    /// Entries those appends wrote.
    pub n_log_entries: Option<u64>,
    /// Last index of its current snapshot.
    pub snapshot_index: Option<u64>,
    /// Last purged log index.
    pub purged_index: Option<u64>,
}

/// A member of the metadata group.
#[derive(Serialize)]
pub struct MemberStatus {
    /// Raft node id.
    pub node_id: u64,
    /// Address.
    pub addr: String,
    /// Voter (else learner).
    pub voter: bool,
    /// Matched log index, as the leader sees it.
    pub matched_index: Option<u64>,
}

impl VoterStatus {
    /// From a status reply (or its absence).
    pub(crate) fn from_reply(
        endpoint: &str,
        reply: Option<lauscha_proto::meta::StatusReply>,
    ) -> VoterStatus {
        match reply {
            None => VoterStatus {
                endpoint: endpoint.to_string(),
                reachable: false,
                node_id: None,
                state: None,
                leader_id: None,
                term: None,
                last_log_index: None,
                last_applied_index: None,
                members: Vec::new(),
                n_log_appends: None,
                n_log_entries: None,
                snapshot_index: None,
                purged_index: None,
            },
            Some(s) => VoterStatus {
                endpoint: endpoint.to_string(),
                reachable: true,
                node_id: Some(s.node_id),
                state: Some(s.state),
                leader_id: s.leader_id,
                term: Some(s.term),
                last_log_index: Some(s.last_log_index),
                last_applied_index: Some(s.last_applied_index),
                members: s
                    .members
                    .into_iter()
                    .map(|m| MemberStatus {
                        node_id: m.node_id,
                        addr: m.addr,
                        voter: m.voter,
                        matched_index: m.matched_index,
                    })
                    .collect(),
                n_log_appends: Some(s.n_log_appends),
                n_log_entries: Some(s.n_log_entries),
                snapshot_index: s.snapshot_index,
                purged_index: s.purged_index,
            },
        }
    }
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
    let metadata = inner.meta.voter_status().await;
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
        metadata,
        nodes: futures::future::join_all(probes).await,
    })
}

#[derive(serde::Deserialize)]
struct AddLearnerBody {
    node_id: u64,
    addr: String,
}

fn parse_id(segment: &str) -> Option<u64> {
    segment.parse().ok()
}

async fn membership(
    inner: &Inner,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    let result = match (method, path.strip_prefix("/v1/meta/")?) {
        (&Method::POST, "compact") => {
            let results = inner.meta.compact_logs().await;
            let body: Vec<serde_json::Value> = results
                .into_iter()
                .map(|(endpoint, r)| match r {
                    Ok(index) => serde_json::json!({"endpoint": endpoint, "snapshot_index": index}),
                    Err(e) => serde_json::json!({"endpoint": endpoint, "error": e}),
                })
                .collect();
            return Some(json(&body));
        }
        (&Method::POST, "learners") => match serde_json::from_slice::<AddLearnerBody>(body) {
            Ok(b) => inner.meta.add_learner(b.node_id, &b.addr).await,
            Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
        },
        (&Method::POST, rest) if rest.starts_with("voters/") => {
            match parse_id(&rest["voters/".len()..]) {
                Some(id) => inner.meta.promote(id).await,
                None => return Some(json_error(StatusCode::BAD_REQUEST, "bad node id")),
            }
        }
        (&Method::DELETE, rest) if rest.starts_with("members/") => {
            match parse_id(&rest["members/".len()..]) {
                Some(id) => inner.meta.remove_member(id).await,
                None => return Some(json_error(StatusCode::BAD_REQUEST, "bad node id")),
            }
        }
        _ => return None,
    };
    Some(match result {
        Ok(()) => json(&serde_json::json!({ "ok": true })),
        Err(e) => {
            warn!(error = %e, "membership change failed");
            json_error(StatusCode::CONFLICT, &e.to_string())
        }
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
    if let Some(response) = membership(inner, &parts.method, parts.uri.path(), &body).await {
        return response;
    }
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/v1/status") | (&Method::GET, "/v1/meta/status") => {
            match status(inner).await {
                Ok(s) => json(&s),
                Err(e) => {
                    warn!(error = %e, "admin status failed");
                    json_error(StatusCode::SERVICE_UNAVAILABLE, &e)
                }
            }
        }
        _ => json_error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}
