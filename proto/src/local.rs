//! Calls between roles that run in one process, without the network.
//!
//! A process may run several roles (`lauscha dev` runs them all; a server config may
//! list a storage node next to a gateway). A call from one to another over loopback gRPC
//! costs two trips through the kernel's TCP stack, HTTP/2 framing on both sides and a
//! handful of task wake-ups: measured on a 2-core VM, about 140 µs of CPU for a 4 KiB
//! read, several times the work of the read itself. [`LocalRoles`] keeps the tonic
//! services of this process's roles by the address they advertise; a client that finds
//! its target there calls the service directly ([`RoleChannel::Local`]): the same
//! generated server code decodes the same protobuf request and runs the same handler,
//! whose future is polled by the caller's task (work it hands to spawned tasks or the
//! blocking pool goes there as before). Every other target is reached over TCP.
//!
//! One call skips gRPC altogether: a storage node's `PutShard` ([`LocalShardWrites`]),
//! whose request is the shard's bytes. Through the service, even in process, they were
//! encoded into protobuf and decoded again (two copies of every byte, and the HTTP/2 body
//! machinery around them: about 6% of the CPU of 1 MiB sequential volume writes); here the
//! node gets the buffer the caller holds. The node runs the same code behind both and
//! answers with the same `Status`, so the caller maps both alike.
//!
//! A role is registered under the address it advertises to the cluster and the one it
//! listens on. A caller in the same process that names either reaches the role directly,
//! even where the advertised address leads through something else (a proxy); callers in
//! other processes go through it as before. Nothing is authenticated between roles on
//! either path, so no check is skipped. A handler that panics fails the call with an
//! error, as a failed connection would, rather than unwinding into the caller.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tower::Service;
use tower::util::BoxCloneSyncService;

type LocalService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// The gRPC services of the roles running in this process, by service name and
/// advertised address. Cheap to clone; clones share the registry.
#[derive(Clone, Default)]
pub struct LocalRoles {
    services: Arc<RwLock<HashMap<(&'static str, String), LocalService>>>,
    shard_writes: Arc<RwLock<HashMap<String, Arc<dyn LocalShardWrites>>>>,
}

/// A storage node's `PutShard` as a call in this process: `header` and all of the shard's
/// bytes in one buffer, answered as the gRPC handler answers.
pub trait LocalShardWrites: Send + Sync + 'static {
    /// Writes the shard and returns once it is durable. `block_hashes`, when given, are
    /// the block hashes of `data` that the header's digest was computed from, by the
    /// caller from this very buffer: the node checks them against the digest and takes
    /// them instead of hashing the bytes a second time. Only this in-process call can
    /// give them; a shard that arrives over the network is always hashed by the node.
    fn put_shard(
        &self,
        header: crate::storage::PutShardHeader,
        data: Bytes,
        block_hashes: Option<Arc<[lauscha_core::checksum::BlockHash]>>,
    ) -> BoxFuture<'static, Result<(), tonic::Status>>;
}

impl fmt::Debug for LocalRoles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services = self.services.read().expect("local roles lock");
        f.debug_set().entries(services.keys()).finish()
    }
}

/// `ip:port` of an address given with or without its `http://` scheme, so that a
/// configured endpoint and an advertised address find the same role.
fn address_key(addr: &str) -> String {
    addr.strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/')
        .to_string()
}

impl LocalRoles {
    /// Registers `service`, which this process also serves at each of `addrs` (the
    /// address a role advertises and the one it listens on).
    pub fn register<S>(&self, addrs: &[&str], service: S)
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let service = BoxCloneSyncService::new(service);
        let mut services = self.services.write().expect("local roles lock");
        for addr in addrs {
            services.insert((S::NAME, address_key(addr)), service.clone());
        }
    }

    /// Registers the shard writes of the storage node this process also serves at each of
    /// `addrs`, next to its service.
    pub fn register_shard_writes(&self, addrs: &[&str], writes: Arc<dyn LocalShardWrites>) {
        let mut shard_writes = self.shard_writes.write().expect("local roles lock");
        for addr in addrs {
            shard_writes.insert(address_key(addr), writes.clone());
        }
    }

    /// Writes a shard to the storage node at `addr` in this process; `None` if it is
    /// elsewhere (the caller goes through gRPC). A handler that panics fails the write,
    /// as it would fail the call over gRPC.
    pub fn put_shard(
        &self,
        addr: &str,
        header: crate::storage::PutShardHeader,
        data: Bytes,
        block_hashes: Option<Arc<[lauscha_core::checksum::BlockHash]>>,
    ) -> Option<impl Future<Output = Result<(), tonic::Status>> + Send + 'static> {
        let writes = self
            .shard_writes
            .read()
            .expect("local roles lock")
            .get(&address_key(addr))?
            .clone();
        let write = AssertUnwindSafe(writes.put_shard(header, data, block_hashes)).catch_unwind();
        Some(async move {
            write.await.unwrap_or_else(|_| {
                Err(tonic::Status::internal(
                    "the in-process handler of PutShard panicked",
                ))
            })
        })
    }

    /// The service `name` (a generated `SERVICE_NAME`) at `addr`, if this process runs it.
    pub fn channel(&self, name: &'static str, addr: &str) -> Option<RoleChannel> {
        self.services
            .read()
            .expect("local roles lock")
            .get(&(name, address_key(addr)))
            .cloned()
            .map(RoleChannel::Local)
    }
}

/// How a client reaches another role: over TCP, or by calling its service in this
/// process. Generated clients take either (`FooClient<RoleChannel>`).
#[derive(Clone)]
pub enum RoleChannel {
    /// A role elsewhere (or one this process does not run).
    Remote(Channel),
    /// A role of this process.
    Local(LocalService),
}

impl fmt::Debug for RoleChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoleChannel::Remote(channel) => f.debug_tuple("Remote").field(channel).finish(),
            RoleChannel::Local(_) => f.write_str("Local"),
        }
    }
}

impl From<Channel> for RoleChannel {
    fn from(channel: Channel) -> RoleChannel {
        RoleChannel::Remote(channel)
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::codegen::StdError>> + Send>>;

impl Service<http::Request<Body>> for RoleChannel {
    type Response = http::Response<Body>;
    type Error = tonic::codegen::StdError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            RoleChannel::Remote(channel) => channel.poll_ready(cx).map_err(Into::into),
            RoleChannel::Local(service) => service.poll_ready(cx).map_err(|never| match never {}),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self {
            RoleChannel::Remote(channel) => {
                let response = channel.call(request);
                Box::pin(async move { response.await.map_err(Into::into) })
            }
            RoleChannel::Local(service) => {
                let path = request.uri().path().to_string();
                // A handler that panics fails this call, as it would fail the connection
                // over TCP, instead of unwinding through the caller (a gateway's request
                // or maintenance task).
                let response = AssertUnwindSafe(service.call(request)).catch_unwind();
                Box::pin(async move {
                    match response.await {
                        Ok(response) => response.map_err(|never| match never {}),
                        Err(_) => Err(format!("the in-process handler of {path} panicked").into()),
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::shard_service_server::SERVICE_NAME;

    /// A service whose handler panics, as a bug in a role's handler would.
    #[derive(Clone)]
    struct Panicking;

    impl NamedService for Panicking {
        const NAME: &'static str = "test.Panicking";
    }

    impl Service<http::Request<Body>> for Panicking {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
            Box::pin(async { panic!("handler bug") })
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_fails_the_call_instead_of_the_caller() {
        let local = LocalRoles::default();
        local.register(&["10.0.0.1:7000"], Panicking);
        let mut channel = local
            .channel(Panicking::NAME, "10.0.0.1:7000")
            .expect("registered");
        let request = http::Request::builder()
            .uri("/test.Panicking/Call")
            .body(Body::empty())
            .unwrap();
        let error = tower::ServiceExt::oneshot(&mut channel, request)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("/test.Panicking/Call"),
            "{error}"
        );
        assert!(error.to_string().contains("panicked"), "{error}");
    }

    #[test]
    fn an_address_is_found_with_or_without_its_scheme() {
        assert_eq!(address_key("http://127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(address_key("http://127.0.0.1:9000/"), "127.0.0.1:9000");
        assert_eq!(address_key("127.0.0.1:9000"), "127.0.0.1:9000");
        assert!(
            LocalRoles::default()
                .channel(SERVICE_NAME, "127.0.0.1:1")
                .is_none()
        );
    }
}
