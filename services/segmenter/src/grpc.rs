//! `cairn.segment.v1.Segments`: saved segments, checked before they are saved.

use cairn_proto::segment::v1 as pb;
use cairn_proto::segment::v1::segments_server::Segments;
use cairn_runtime::auth::{Principal, Role, require_role};
use cairn_runtime::clock::{now_ms, timestamp};
use cairn_store::Store;
use tonic::{Request, Response, Status};

use crate::definitions::{self, Definition};
use crate::error::SegmentError;

#[derive(Clone)]
pub struct SegmentsService<S> {
    pub store: S,
}

fn authorize<T>(request: &Request<T>, role: Role) -> Result<(), SegmentError> {
    require_role(request.extensions().get::<Principal>(), role)?;
    Ok(())
}

fn to_proto(definition: &Definition) -> pb::Segment {
    pb::Segment {
        name: definition.name.clone(),
        filter: definition.filter.clone(),
        description: definition.description.clone(),
        updated_at: Some(timestamp(definition.updated_ms)),
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
        let saved = definitions::put(
            &self.store,
            &request.name,
            &request.filter,
            &request.description,
            now_ms(),
        )
        .await?;
        tracing::info!(segment = %saved.name, "segment saved");
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
        let name = match (request.name.trim(), filter.alias.as_deref()) {
            ("", Some(alias)) => alias.to_string(),
            ("", None) => "(new segment)".to_string(),
            (name, _) => name.to_string(),
        };
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
}
