//! `cairn.admin.v1.Admin`: what a process runs and whether it is ready, for operators
//! holding a bearer token with the read role.

use std::time::SystemTime;

use cairn_proto::admin::v1::admin_server::Admin;
use cairn_proto::admin::v1::{StatusRequest, StatusResponse};
use tonic::{Request, Response, Status};

use crate::admin::Readiness;
use crate::auth::{Principal, Role, require_role};
use crate::error::to_status;

#[derive(Debug, Clone)]
pub struct AdminService {
    modules: Vec<String>,
    readiness: Readiness,
    started_at: SystemTime,
}

impl AdminService {
    pub fn new(modules: Vec<String>, readiness: Readiness) -> Self {
        Self {
            modules,
            readiness,
            started_at: SystemTime::now(),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        require_role(request.extensions().get::<Principal>(), Role::Read)
            .map_err(|err| to_status(&err))?;
        let reasons = self.readiness.check().err().unwrap_or_default();
        Ok(Response::new(StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            modules: self.modules.clone(),
            ready: reasons.is_empty(),
            not_ready_reasons: reasons,
            started_at: Some(self.started_at.into()),
        }))
    }
}
