//! A small REST client of the control plane for tests that act as users.

use protocol::api::{
    AttachmentView, AuthResponse, CreateGroupRequest, CreateSessionRequest, GroupView, InviteView,
    RegisterRequest, SessionAllocation, SessionKind,
};

/// One signed-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub base: String,
    pub token: String,
    pub id: protocol::UserId,
    http: reqwest::Client,
}

impl User {
    /// Registers a new user with a unique name.
    pub async fn register(base: &str, name: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let body = RegisterRequest {
            username: format!("{name}_{}", &tag[..8]),
            email: format!("{name}.{}@example.com", &tag[..12]),
            password: "a long test passphrase".into(),
        };
        let res = http
            .post(format!("{base}/v1/auth/register"))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 201, "register: {}", res.status());
        let auth: AuthResponse = res.json().await?;
        Ok(Self {
            base: base.to_string(),
            token: auth.access_token,
            id: auth.user.id,
            http,
        })
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, T)> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("POST {path} -> {status}: {e}: {text}"))?;
        Ok((status, value))
    }

    /// Creates a group; the caller is its admin.
    pub async fn create_group(&self, name: &str) -> anyhow::Result<GroupView> {
        let body = serde_json::to_value(CreateGroupRequest { name: name.into() })?;
        Ok(self.post("/v1/groups", Some(body)).await?.1)
    }

    /// Creates an invite to a group (admins only).
    pub async fn invite(&self, group: &GroupView) -> anyhow::Result<InviteView> {
        Ok(self
            .post(&format!("/v1/groups/{}/invites", group.id), None)
            .await?
            .1)
    }

    /// Accepts an invite.
    pub async fn accept(&self, invite: &InviteView) -> anyhow::Result<()> {
        let (status, _): (u16, serde_json::Value) = self
            .post(&format!("/v1/invites/{}/accept", invite.code), None)
            .await?;
        anyhow::ensure!(status == 200, "accept: {status}");
        Ok(())
    }

    /// Allocates (or joins) the group's audio session: (HTTP status, allocation).
    pub async fn allocate(&self, group: &GroupView) -> anyhow::Result<(u16, SessionAllocation)> {
        self.allocate_kind(group, SessionKind::Audio).await
    }

    /// Allocates (or joins) the group's session of `kind`: (HTTP status, allocation).
    pub async fn allocate_kind(
        &self,
        group: &GroupView,
        kind: SessionKind,
    ) -> anyhow::Result<(u16, SessionAllocation)> {
        let body = serde_json::to_value(CreateSessionRequest { kind, e2ee: false })?;
        self.post(&format!("/v1/groups/{}/sessions", group.id), Some(body))
            .await
    }

    /// Uploads a file to the group: its attachment.
    pub async fn upload(
        &self,
        group: &GroupView,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<AttachmentView> {
        let res = self
            .http
            .post(format!("{}/v1/groups/{}/attachments", self.base, group.id))
            .query(&[("name", name)])
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 201, "upload: {}", res.status());
        Ok(res.json().await?)
    }

    /// `POST /v1/sessions/{id}/music`: (HTTP status, the body as JSON).
    pub async fn music(
        &self,
        session: protocol::SessionId,
        action: serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        self.post(&format!("/v1/sessions/{session}/music"), Some(action))
            .await
    }

    /// `GET path` as JSON.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 200, "GET {path}: {}", res.status());
        Ok(res.json().await?)
    }
}
