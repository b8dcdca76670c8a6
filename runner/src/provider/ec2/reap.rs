//! The reaper: the sweep that removes what crashes and failed teardowns leave in the account:
//! instances, key pairs and security groups of this server whose host or build is no longer live.
//! It lists before it asks what is live, so nothing being provisioned during a sweep is taken for
//! an orphan, and it never touches another server's resources (they carry another
//! `gantry:server` tag). The deleting itself is teardown's (`mod.rs`).

use std::collections::BTreeSet;

use aws_sdk_ec2::types::InstanceStateName;
use tokio::time::Instant;

use super::api::{state, tag_value, ApiError};
use super::{Ec2Provider, TAG_HOST};
use crate::provider::{HostId, LiveHosts, ProviderError, ReapReport};

/// Remove every resource of this server that no live host or build owns.
pub(super) async fn reap(provider: &Ec2Provider, live: &dyn LiveHosts) -> Result<ReapReport, ProviderError> {
    let deadline = Instant::now() + provider.config.terminate_timeout;
    let failed = |e: ApiError| ProviderError::Reap(e.to_string());
    // List first, then ask what is live: a host recorded after the listing cannot own any of
    // what was listed, so nothing just being provisioned is taken for an orphan.
    let instances = provider.instances(Vec::new(), deadline).await.map_err(failed)?;
    let keys = provider.keys(deadline).await.map_err(failed)?;
    let groups = provider.groups(Vec::new(), deadline).await.map_err(failed)?;
    let live = live.live().await.map_err(ProviderError::Reap)?;
    let is_live = |host: Option<&str>| host.is_some_and(|h| live.hosts.contains(&HostId(h.to_string())));

    let mut report = ReapReport::default();
    let orphans: Vec<String> = instances
        .iter()
        .filter(|i| !matches!(state(i), Some(InstanceStateName::ShuttingDown) | Some(InstanceStateName::Terminated)))
        .filter(|i| !is_live(tag_value(i.tags(), TAG_HOST)))
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    if !orphans.is_empty() {
        tracing::warn!(instances = ?orphans, "terminating EC2 instances no live build owns");
        provider.terminate(&orphans, deadline).await.map_err(failed)?;
        report.instances = orphans.len();
    }
    for (name, host) in keys {
        if !is_live(host.as_deref()) {
            tracing::warn!(key = %name, "deleting a key pair no live build owns");
            provider.delete_key(&name, deadline).await.map_err(failed)?;
            report.key_pairs += 1;
        }
    }
    let orphan_builds: BTreeSet<String> =
        groups.into_iter().map(|(_, build)| build).filter(|build| !live.builds.contains(build)).collect();
    for build in orphan_builds {
        report.security_groups += provider.delete_group_if_unused(&build, deadline).await.map_err(failed)?;
    }
    Ok(report)
}
