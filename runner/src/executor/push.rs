//! Pushing to the hosts: the commit's tree to `~/src`, data directories to `~/data`, then the
//! config templates rendered for the host, in that order so a config may land inside the code.
//!
//! The code is packed once per build and shared by every host that receives it. Sources are read
//! on a blocking thread; nothing here decides whether a build goes on after a failed push.

use std::sync::Arc;

use super::{human_bytes, PhaseEnd, Run, CODE_DIR, DATA_DIR};
use crate::event::{StepIndex, StepKind, StepStatus};
use crate::pipeline::render_template;
use crate::source::{Source, SourceError};
use crate::transport::Transport;

impl Run<'_> {
    pub(super) async fn push_all(&self) -> PhaseEnd {
        let pipeline = self.pipeline();
        let pushes = pipeline.hosts.iter().filter_map(|host| {
            let step = self.host_step(StepKind::Push, &host.role)?;
            Some(self.push(step, &host.role))
        });
        let results = futures::future::join_all(pushes).await;
        if results.iter().all(|ok| *ok) {
            PhaseEnd::Continue
        } else {
            PhaseEnd::Stop
        }
    }

    async fn push(&self, step: StepIndex, role: &str) -> bool {
        if self.cancel.is_cancelled() {
            self.finish(step, StepStatus::Cancelled, None).await;
            return true;
        }
        self.start(step).await;
        let result = match self.host(role) {
            Some(host) => self.push_to(step, role, host.transport.as_ref()).await,
            None => Err(format!("host {role} was never provisioned")),
        };
        match result {
            Ok(()) => {
                self.finish(step, StepStatus::Passed, None).await;
                true
            }
            Err(message) => {
                let message = format!("push to {role} failed: {message}");
                self.system_line(step, &message).await;
                self.error(message);
                self.finish(step, StepStatus::Failed, None).await;
                false
            }
        }
    }

    /// Code, then data, then rendered config (which may land inside the code, e.g. `src/.env`).
    async fn push_to(&self, step: StepIndex, role: &str, transport: &dyn Transport) -> Result<(), String> {
        let pipeline = self.pipeline();
        if pipeline.has_code(role) {
            let archive = self.code_archive().await?;
            let size = archive.len();
            transport.upload_tar("", archive.as_ref().clone()).await.map_err(|e| e.to_string())?;
            self.system_line(
                step,
                &format!("code of {} → ~/{CODE_DIR} ({})", self.plan.info.commit, human_bytes(size)),
            )
            .await;
        }
        for data in pipeline.push.data.iter().filter(|d| d.to == role) {
            let from = data.from.clone();
            let archive = self.pack(move |source, out| source.archive(&from, DATA_DIR, out)).await?;
            let size = archive.len();
            transport.upload_tar("", archive).await.map_err(|e| e.to_string())?;
            let name = data.from.rsplit('/').next().unwrap_or(&data.from);
            self.system_line(step, &format!("data {} → ~/{DATA_DIR}/{name} ({})", data.from, human_bytes(size))).await;
        }
        let configs: Vec<_> = pipeline.push.config.iter().filter(|c| c.host == role).collect();
        if !configs.is_empty() {
            for config in configs {
                let context = self.template_context(&config.secrets)?;
                let template = config.template.clone();
                let text = self
                    .pack(move |source, out| match source.read_file(&template)? {
                        Some(bytes) => out
                            .write_all(&bytes)
                            .map_err(|e| SourceError::Io { path: template.clone().into(), source: e }),
                        None => Err(SourceError::NotFound(template.clone())),
                    })
                    .await?;
                let text = String::from_utf8(text).map_err(|_| format!("template {} is not UTF-8", config.template))?;
                let rendered = render_template(&config.template, &text, &context).map_err(|e| e.to_string())?;
                transport.write_file(&config.path, rendered.into_bytes()).await.map_err(|e| e.to_string())?;
                self.system_line(step, &format!("config {} → ~/{}", config.template, config.path)).await;
            }
        }
        Ok(())
    }

    async fn code_archive(&self) -> Result<Arc<Vec<u8>>, String> {
        self.code_archive
            .get_or_init(|| async { self.pack(|source, out| source.archive("", CODE_DIR, out)).await.map(Arc::new) })
            .await
            .clone()
    }

    /// Run `f` against the source on a blocking thread (sources are synchronous), collecting what
    /// it writes.
    async fn pack<F>(&self, f: F) -> Result<Vec<u8>, String>
    where
        F: FnOnce(&dyn Source, &mut dyn std::io::Write) -> Result<(), SourceError> + Send + 'static,
    {
        let source = Arc::clone(&self.plan.source);
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            f(source.as_ref(), &mut out).map(|()| out)
        })
        .await
        .map_err(|e| format!("reading the source panicked: {e}"))?
        .map_err(|e| e.to_string())
    }
}
