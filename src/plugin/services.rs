//! go-plugin's internal services: controller (graceful exit), stdio (held
//! open; we never write to stdout after the handshake) and broker (Nomad never
//! brokers connections for drivers; the stream ends when the host ends it).

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::plugin::grpc_broker_server::GrpcBroker;
use crate::proto::plugin::grpc_controller_server::GrpcController;
use crate::proto::plugin::grpc_stdio_server::GrpcStdio;
use crate::proto::plugin::{ConnInfo, Empty, StdioData};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `plugin.GRPCController`.
pub struct Controller {
    shutdown: CancellationToken,
}

impl Controller {
    /// A controller that cancels `shutdown` when asked.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { shutdown }
    }
}

#[tonic::async_trait]
impl GrpcController for Controller {
    /// The host's `Kill()`: stop serving and exit; the host SIGKILLs us after 2 s.
    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::info!("shutdown requested by the host");
        self.shutdown.cancel();
        Ok(Response::new(Empty {}))
    }
}

/// `plugin.GRPCStdio`.
pub struct Stdio {
    shutdown: CancellationToken,
}

impl Stdio {
    /// A stdio service whose stream ends at shutdown.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { shutdown }
    }
}

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = BoxStream<StdioData>;

    /// Opened by the host right after connecting. We print nothing on stdout
    /// after the handshake and log to stderr directly, so the stream carries
    /// no data; it stays open until we exit.
    async fn stream_stdio(
        &self,
        _: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        let stop = self.shutdown.clone();
        let stream = futures::stream::once(async move {
            stop.cancelled().await;
        })
        .filter_map(|()| async { None::<Result<StdioData, Status>> });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `plugin.GRPCBroker`.
pub struct Broker {
    shutdown: CancellationToken,
}

impl Broker {
    /// A broker that accepts the host's stream and never brokers anything.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { shutdown }
    }
}

#[tonic::async_trait]
impl GrpcBroker for Broker {
    type StartStreamStream = BoxStream<ConnInfo>;

    /// Drain what the host sends; end our side when the host ends its side
    /// or we shut down.
    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let stop = self.shutdown.clone();
        let stream = futures::stream::once(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    msg = inbound.next() => match msg {
                        Some(Ok(info)) => tracing::debug!(service_id = info.service_id, "ignoring a broker message"),
                        Some(Err(_)) | None => break,
                    },
                }
            }
        })
        .filter_map(|()| async { None::<Result<ConnInfo, Status>> });
        Ok(Response::new(Box::pin(stream)))
    }
}
