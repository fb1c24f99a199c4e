//! `cairn.collector.v1.Collector`: the same validation, limits and acknowledgement
//! rules as the HTTP API, over gRPC. Callers authenticate with
//! `authorization: Basic base64(<write key>:)`.

use cairn_proto::collector::v1::collector_server::Collector;
use cairn_proto::collector::v1::{
    IngestRequest, IngestResponse, IngestStreamRequest, IngestStreamResponse,
};
use cairn_runtime::auth::{Principal, require_source};
use tonic::{Request, Response, Status, Streaming};

use crate::error::CollectorError;
use crate::event;
use crate::ingest::{Ingest, RequestMeta};

/// The gRPC face of [`Ingest`].
#[derive(Debug, Clone)]
pub struct CollectorService {
    ingest: Ingest,
    trust_forwarded_for: bool,
}

impl CollectorService {
    pub fn new(ingest: Ingest, trust_forwarded_for: bool) -> Self {
        Self {
            ingest,
            trust_forwarded_for,
        }
    }

    fn meta<T>(&self, request: &Request<T>) -> Result<RequestMeta, CollectorError> {
        let source = require_source(request.extensions().get::<Principal>())?.to_string();
        Ok(RequestMeta {
            source,
            client_ip: crate::http::client_ip(
                &request.metadata().clone().into_headers(),
                request.remote_addr(),
                self.trust_forwarded_for,
            ),
            user_agent: request
                .metadata()
                .get("user-agent")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        })
    }

    async fn store(
        &self,
        events: &[bytes::Bytes],
        meta: &RequestMeta,
    ) -> Result<Vec<String>, CollectorError> {
        let accepted = event::parse_events(events)?;
        self.ingest.store(accepted, meta).await
    }

    fn refuse(&self, err: CollectorError) -> Status {
        self.ingest.count_rejection(&err);
        err.into()
    }
}

#[tonic::async_trait]
impl Collector for CollectorService {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let meta = self.meta(&request).map_err(|err| self.refuse(err))?;
        let message_ids = self
            .store(&request.get_ref().events, &meta)
            .await
            .map_err(|err| self.refuse(err))?;
        Ok(Response::new(IngestResponse { message_ids }))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestStreamRequest>>,
    ) -> Result<Response<IngestStreamResponse>, Status> {
        let meta = self.meta(&request).map_err(|err| self.refuse(err))?;
        let mut stream = request.into_inner();
        let mut totals = IngestStreamResponse::default();
        while let Some(batch) = stream.message().await? {
            let stored = self.store(&batch.events, &meta).await.map_err(|err| {
                // Earlier batches are stored; say how many so the client resumes there.
                let status = self.refuse(err);
                Status::with_metadata(
                    status.code(),
                    format!(
                        "batch {} (after {} events stored): {}",
                        totals.batches,
                        totals.accepted,
                        status.message()
                    ),
                    status.metadata().clone(),
                )
            })?;
            totals.accepted += stored.len() as u64;
            totals.batches += 1;
        }
        Ok(Response::new(totals))
    }
}
