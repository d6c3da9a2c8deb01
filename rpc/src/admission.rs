//! The node-wide cap on client requests (`limits.node_requests_max`).
//!
//! A tower layer in front of every service: a client request (Data or Admin service, or
//! reflection) takes a permit before it reaches its handler and gives it back when its
//! response body ends, so a stream counts for as long as it runs. When none is left the
//! request is answered RESOURCE_EXHAUSTED at once, naming the limit: the node never queues
//! an unbounded number of requests. Raft traffic between nodes (`kho.v1.RaftTransport`)
//! and health checks pass without a permit: they must get through a node full of clients.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Status;

/// Request paths that never take a permit.
const EXEMPT_PREFIXES: [&str; 2] = ["/kho.v1.RaftTransport/", "/grpc.health.v1.Health/"];

#[derive(Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl AdmissionLayer {
    pub fn new(max: usize) -> Self {
        AdmissionLayer { permits: Arc::new(Semaphore::new(max)), max }
    }
}

impl<S> tower_layer::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, permits: self.permits.clone(), max: self.max }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max: usize,
}

/// The gRPC method a request calls (`Put`, `ReadRow`, …), put in its extensions.
#[derive(Clone, Debug)]
pub struct RpcMethod(pub String);

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody> tower_service::Service<http::Request<ReqBody>> for Admission<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The method's name, for the audit log (tonic keeps a request's extensions).
        let method = RpcMethod(req.uri().path().rsplit('/').next().unwrap_or_default().to_string());
        req.extensions_mut().insert(method);
        let path = req.uri().path();
        if EXEMPT_PREFIXES.iter().any(|p| path.starts_with(p)) {
            let fut = self.inner.call(req);
            return Box::pin(fut);
        }
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let status = Status::resource_exhausted(format!(
                    "this node is serving {} client requests, its limit (limits.node_requests_max); retry later or on another node",
                    self.max
                ));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| Body::new(PermitBody { inner: body, _permit: permit })))
        })
    }
}

/// A response body that holds its request's permit until it is dropped.
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for PermitBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
