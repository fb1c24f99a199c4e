//! `cairn.campaign.v1.Campaigns`: saved campaigns, checked before they are saved, paused,
//! resumed, and their stats.

use cairn_proto::campaign::v1 as pb;
use cairn_proto::campaign::v1::campaigns_server::Campaigns;
use cairn_runtime::auth::{Principal, Role, require_role};
use cairn_runtime::clock::{now_ms, timestamp};
use cairn_store::Store;
use tonic::{Request, Response, Status};

use super::definition::{Campaign, Channel};
use super::engine;
use super::saved::{self, Saved};
use crate::error::SegmentError;

#[derive(Clone)]
pub struct CampaignsService<S> {
    pub store: S,
    /// Whether campaign webhook calls can be signed (a secret is configured).
    pub webhooks_signed: bool,
}

fn authorize<T>(request: &Request<T>, role: Role) -> Result<(), SegmentError> {
    require_role(request.extensions().get::<Principal>(), role)?;
    Ok(())
}

fn to_proto(saved: &Saved) -> pb::Campaign {
    pb::Campaign {
        name: saved.name.clone(),
        source: saved.source.clone(),
        paused: saved.paused,
        updated_at: Some(timestamp(saved.updated_ms)),
    }
}

impl<S: Store> CampaignsService<S> {
    async fn saved(&self, name: &str) -> Result<Saved, SegmentError> {
        saved::load(&self.store)
            .await?
            .campaigns
            .remove(name)
            .ok_or_else(|| SegmentError::MissingCampaign(name.to_string()))
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<pb::Campaign, SegmentError> {
        let saved = saved::set_paused(&self.store, name, paused, now_ms()).await?;
        tracing::info!(campaign = %name, paused, "campaign paused or resumed");
        Ok(to_proto(&saved))
    }
}

#[tonic::async_trait]
impl<S: Store> Campaigns for CampaignsService<S> {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        authorize(&request, Role::Write)?;
        let source = request.into_inner().source;
        let campaign = Campaign::parse(&source)?;
        if !self.webhooks_signed
            && let Some((state, _)) = campaign.actions.iter().find(|(_, actions)| {
                actions
                    .iter()
                    .any(|action| matches!(action.channel, Channel::Webhook { .. }))
            })
        {
            return Err(SegmentError::InvalidArgument(format!(
                "campaign {}: actions.{state}: a webhook action needs CAIRN_CAMPAIGN_WEBHOOK_SECRET set on the segmenter, to sign its calls",
                campaign.name
            ))
            .into());
        }
        let saved = saved::put(&self.store, &source, now_ms()).await?;
        tracing::info!(campaign = %saved.name, "campaign saved");
        Ok(Response::new(pb::PutResponse {
            campaign: Some(to_proto(&saved)),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        authorize(&request, Role::Read)?;
        let saved = self.saved(&request.into_inner().name).await?;
        Ok(Response::new(pb::GetResponse {
            campaign: Some(to_proto(&saved)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        authorize(&request, Role::Read)?;
        let all = saved::load(&self.store).await?;
        Ok(Response::new(pb::ListResponse {
            campaigns: all.campaigns.values().map(to_proto).collect(),
        }))
    }

    async fn pause(
        &self,
        request: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        authorize(&request, Role::Write)?;
        let campaign = self.set_paused(&request.into_inner().name, true).await?;
        Ok(Response::new(pb::PauseResponse {
            campaign: Some(campaign),
        }))
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::ResumeResponse>, Status> {
        authorize(&request, Role::Write)?;
        let campaign = self.set_paused(&request.into_inner().name, false).await?;
        Ok(Response::new(pb::ResumeResponse {
            campaign: Some(campaign),
        }))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        authorize(&request, Role::Read)?;
        let name = request.into_inner().name;
        self.saved(&name).await?;
        let stats = engine::stats(&self.store, &name).await?;
        Ok(Response::new(pb::StatsResponse {
            name,
            profiles: stats.profiles,
            entered: stats.entered,
            in_state: stats.in_state.into_iter().collect(),
            actions_sent: stats.actions_sent,
            suppressed: stats.suppressed,
        }))
    }
}
