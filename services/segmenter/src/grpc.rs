//! `cairn.segment.v1.Segments`: saved segments, checked before they are saved.

use cairn_bus::Bus;
use cairn_proto::segment::v1 as pb;
use cairn_proto::segment::v1::segments_server::Segments;
use cairn_runtime::auth::{Principal, Role, require_role};
use cairn_runtime::clock::{now_ms, timestamp};
use cairn_store::Store;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::batch::{Batches, Progress, preview, scan_members};
use crate::definitions::{self, Definition, Draft, Webhook};
use crate::error::SegmentError;
use crate::live::LiveHandler;

#[derive(Clone)]
pub struct SegmentsService<S> {
    pub store: S,
    /// Decides memberships the way the live path does, for batch runs.
    pub live: LiveHandler<S>,
    pub bus: Bus,
    pub batches: Batches,
    /// Scans in parallel per batch run, size or members listing.
    pub ranges: u32,
}

/// How often a batch run's progress is sent at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Profiles a preview evaluates when the request does not say.
const PREVIEW_PROFILES: u64 = 10_000;

/// The name a filter not yet saved goes by: the one asked for, its ALIAS, or a
/// placeholder.
fn draft_name(requested: &str, filter: &cairn_filterql::Filter) -> String {
    match (requested.trim(), filter.alias.as_deref()) {
        ("", Some(alias)) => alias.to_string(),
        ("", None) => "(new segment)".to_string(),
        (name, _) => name.to_string(),
    }
}

fn authorize<T>(request: &Request<T>, role: Role) -> Result<(), SegmentError> {
    require_role(request.extensions().get::<Principal>(), role)?;
    Ok(())
}

fn progress_to_proto(progress: &Progress) -> pb::EvaluateResponse {
    pb::EvaluateResponse {
        name: progress.segment.clone(),
        evaluated: progress.evaluated,
        fraction: progress.fraction,
        size: progress.size,
        corrected: progress.corrected,
        sample: progress.sample.clone(),
        done: progress.done,
    }
}

fn to_proto(definition: &Definition) -> pb::Segment {
    pb::Segment {
        name: definition.name.clone(),
        filter: definition.filter.clone(),
        description: definition.description.clone(),
        updated_at: Some(timestamp(definition.updated_ms)),
        webhook_url: definition
            .webhook
            .as_ref()
            .map(|webhook| webhook.url.clone())
            .unwrap_or_default(),
    }
}

impl<S: Store> SegmentsService<S> {
    /// Fails unless segment `name` is saved.
    async fn known(&self, name: &str) -> Result<(), SegmentError> {
        let (saved, _) = definitions::load(&self.store).await?;
        if saved.segments.contains_key(name) {
            Ok(())
        } else {
            Err(SegmentError::Missing(name.to_string()))
        }
    }
}

#[tonic::async_trait]
impl<S: Store> Segments for SegmentsService<S> {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        authorize(&request, Role::Write)?;
        let request = request.into_inner();
        let draft = Draft {
            webhook: Webhook::from_request(&request.webhook_url, &request.webhook_secret)?,
            name: request.name,
            filter: request.filter,
            description: request.description,
            keep_webhook: request.keep_webhook,
        };
        let saved = definitions::put(&self.store, draft, now_ms()).await?;
        tracing::info!(segment = %saved.name, "segment saved");
        // Everyone already profiled is evaluated against it.
        self.batches
            .start(&self.live, &self.bus, &saved.name, self.ranges);
        Ok(Response::new(pb::PutResponse {
            segment: Some(to_proto(&saved)),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        authorize(&request, Role::Read)?;
        let name = request.into_inner().name;
        let (saved, _) = definitions::load(&self.store).await?;
        let found = saved
            .segments
            .get(&name)
            .ok_or_else(|| SegmentError::Missing(name.clone()))?;
        Ok(Response::new(pb::GetResponse {
            segment: Some(to_proto(found)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        authorize(&request, Role::Read)?;
        let (saved, _) = definitions::load(&self.store).await?;
        Ok(Response::new(pb::ListResponse {
            segments: saved.segments.values().map(to_proto).collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        authorize(&request, Role::Write)?;
        let name = request.into_inner().name;
        definitions::delete(&self.store, &name).await?;
        tracing::info!(segment = %name, "segment deleted");
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        authorize(&request, Role::Read)?;
        let request = request.into_inner();
        let (saved, _) = definitions::load(&self.store).await?;
        let definition = saved
            .segments
            .get(&request.segment)
            .ok_or_else(|| SegmentError::Missing(request.segment.clone()))?;
        let filter = cairn_filterql::parse(&definition.filter)
            .map_err(|err| SegmentError::Corrupt(format!("segment {}: {err}", definition.name)))?;
        let stored = cairn_profile_store::store::read(&self.store, &request.profile_id)
            .await
            .map_err(|err| SegmentError::InvalidArgument(err.to_string()))?
            .ok_or_else(|| {
                SegmentError::InvalidArgument(format!(
                    "profile_id: there is no profile {:?}",
                    request.profile_id
                ))
            })?;
        let now = now_ms();
        let profile = serde_json::to_value(stored.profile.view(now))
            .map_err(|err| SegmentError::Corrupt(err.to_string()))?;
        // INCLUDEs answer with the memberships as the segmenter keeps them.
        let members = crate::live::members(&self.store, &stored.profile.id).await?;
        let includes = |name: &str| Some(members.members.contains_key(name));
        let explanation = cairn_filterql::explain(
            &filter.expr,
            &profile,
            &cairn_filterql::Context {
                now_ms: now,
                includes: &includes,
            },
        );
        Ok(Response::new(pb::ExplainResponse {
            matches: explanation.holds,
            explanation_json: explanation.to_json().to_string(),
        }))
    }

    type EvaluateStream = ReceiverStream<Result<pb::EvaluateResponse, Status>>;

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<Self::EvaluateStream>, Status> {
        authorize(&request, Role::Write)?;
        let name = request.into_inner().name;
        let (saved, _) = definitions::load(&self.store).await?;
        if !saved.segments.contains_key(&name) {
            return Err(SegmentError::Missing(name).into());
        }
        let mut progress = self
            .batches
            .start(&self.live, &self.bus, &name, self.ranges);
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let current = progress.borrow_and_update().clone();
                let sent = match &current.error {
                    Some(error) => {
                        let err = SegmentError::Busy(format!("the batch run failed: {error}"));
                        sender.send(Err(err.into())).await
                    }
                    None => sender.send(Ok(progress_to_proto(&current))).await,
                };
                if current.done || sent.is_err() {
                    return;
                }
                tokio::time::sleep(PROGRESS_EVERY).await;
                if progress.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn size(
        &self,
        request: Request<pb::SizeRequest>,
    ) -> Result<Response<pb::SizeResponse>, Status> {
        authorize(&request, Role::Read)?;
        let name = request.into_inner().name;
        self.known(&name).await?;
        let (sender, mut receiver) = mpsc::channel(1024);
        let store = self.store.clone();
        let ranges = self.ranges;
        let scan = tokio::spawn(async move { scan_members(&store, &name, ranges, sender).await });
        let mut size = 0;
        while receiver.recv().await.is_some() {
            size += 1;
        }
        scan.await
            .map_err(|err| SegmentError::Busy(format!("the scan stopped: {err}")))??;
        Ok(Response::new(pb::SizeResponse { size }))
    }

    type MembersStream = ReceiverStream<Result<pb::MembersResponse, Status>>;

    async fn members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<Self::MembersStream>, Status> {
        authorize(&request, Role::Read)?;
        let request = request.into_inner();
        self.known(&request.name).await?;
        let (found, mut members) = mpsc::channel(256);
        let (sender, receiver) = mpsc::channel(64);
        let (store, ranges) = (self.store.clone(), self.ranges);
        let name = request.name.clone();
        let scan = tokio::spawn(async move { scan_members(&store, &name, ranges, found).await });
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while let Some((profile_id, since)) = members.recv().await {
                let mut member = pb::MembersResponse {
                    profile_id,
                    since: Some(timestamp(since)),
                    profile_json: String::new(),
                };
                if request.with_profiles {
                    match cairn_profile_store::store::read(&store, &member.profile_id).await {
                        // Deleted meanwhile.
                        Ok(None) => continue,
                        Ok(Some(stored)) => {
                            member.profile_json = stored.profile.view_json(now_ms());
                        }
                        Err(err) => {
                            let _ = sender.send(Err(Status::internal(err.to_string()))).await;
                            return;
                        }
                    }
                }
                if sender.send(Ok(member)).await.is_err() {
                    return;
                }
                sent += 1;
                if request.limit > 0 && sent >= request.limit {
                    return;
                }
            }
            match scan.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    let _ = sender.send(Err(err.into())).await;
                }
                Err(err) => {
                    let err = SegmentError::Busy(format!("the scan stopped: {err}"));
                    let _ = sender.send(Err(err.into())).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        authorize(&request, Role::Read)?;
        let request = request.into_inner();
        let filter = match cairn_filterql::parse(&request.filter) {
            Ok(filter) => filter,
            Err(err) => {
                return Ok(Response::new(pb::CheckResponse {
                    canonical: String::new(),
                    problems: vec![pb::Problem {
                        message: err.message,
                        line: u32::try_from(err.line).unwrap_or(u32::MAX),
                        column: u32::try_from(err.column).unwrap_or(u32::MAX),
                    }],
                }));
            }
        };
        let canonical = cairn_filterql::print(&filter);
        let name = draft_name(&request.name, &filter);
        let (saved, _) = definitions::load(&self.store).await?;
        let mut set = saved.set()?;
        let problems = match set.insert(&name, filter) {
            Ok(()) => Vec::new(),
            Err(SegmentError::Invalid { reason, .. }) => reason
                .split("; ")
                .map(|message| pb::Problem {
                    message: message.to_string(),
                    line: 0,
                    column: 0,
                })
                .collect(),
            Err(err) => return Err(err.into()),
        };
        Ok(Response::new(pb::CheckResponse {
            canonical,
            problems,
        }))
    }

    async fn preview(
        &self,
        request: Request<pb::PreviewRequest>,
    ) -> Result<Response<pb::PreviewResponse>, Status> {
        authorize(&request, Role::Read)?;
        let request = request.into_inner();
        let filter = cairn_filterql::parse(&request.filter)
            .map_err(|err| SegmentError::InvalidArgument(format!("filter: {err}")))?;
        let name = draft_name(&request.name, &filter);
        let (saved, _) = definitions::load(&self.store).await?;
        let mut set = saved.set()?;
        set.insert(&name, filter)?;
        let max_profiles = match request.max_profiles {
            0 => PREVIEW_PROFILES,
            max => max,
        };
        let found = preview(&self.store, &set, &name, max_profiles).await?;
        Ok(Response::new(pb::PreviewResponse {
            evaluated: found.evaluated,
            matched: found.matched,
            fraction: found.fraction,
            estimated_size: found.estimated_size(),
            sample: found.sample,
        }))
    }
}
