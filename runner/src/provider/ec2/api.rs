//! EC2 API calls under Gantry's one retry policy. `call` runs a call with backon's jittered
//! exponential backoff until the operation's deadline; `ApiError::from_sdk` decides what is worth
//! another attempt (throttling, capacity, AWS-side failures, lost connections) and keeps AWS's code
//! and message for everything else. `describe_own` is the one place that lists this server's
//! resources by their `gantry:server` tag, every page of them. Also the small helpers for tags and
//! instance states the other parts use. It decides nothing about what to create or delete: that is
//! `launch`'s, teardown's (`mod.rs`) and `reap`'s.

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName, Tag};
use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use super::{Ec2Provider, TAG_BUILD, TAG_HOST, TAG_SERVER};

/// Error codes worth another attempt: throttling, capacity and AWS-side failures.
const TRANSIENT_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientAddressCapacity",
    "InsufficientCapacity",
    "ServiceUnavailable",
    "Unavailable",
    "InternalError",
    "InternalFailure",
];

/// An EC2 API error, with AWS's code and message when it gave them.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action}: {message}")]
pub struct ApiError {
    pub action: &'static str,
    pub code: Option<String>,
    pub message: String,
    transient: bool,
}

impl ApiError {
    fn from_sdk<E>(action: &'static str, error: SdkError<E, HttpResponse>) -> ApiError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = error.code().map(str::to_string);
        let transient = match &error {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => {
                code.as_deref().is_some_and(|c| TRANSIENT_CODES.contains(&c))
                    || (code.is_none() && service.raw().status().is_server_error())
            }
            _ => false,
        };
        let message = match (&code, error.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.clone(),
            _ => DisplayErrorContext(&error).to_string(),
        };
        ApiError { action, code, message, transient }
    }

    pub(super) fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    pub(super) fn is_not_found(&self) -> bool {
        self.code.as_deref().is_some_and(|c| c.ends_with(".NotFound") || c.ends_with(".Malformed"))
    }
}

impl Ec2Provider {
    /// Run one API call under the retry policy, until `deadline` at the latest.
    pub(super) async fn call<T, E, F, Fut>(
        &self,
        action: &'static str,
        deadline: Instant,
        mut op: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let policy = self.config.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.max_retries)
            .with_jitter();
        let attempt = || {
            let sent = op();
            async move { sent.await.map_err(|e| ApiError::from_sdk(action, e)) }
        };
        // What the last failed attempt said, for the error when the deadline cuts the retries.
        let last = std::sync::Mutex::new(None::<String>);
        let retried = attempt.retry(backoff).sleep(tokio::time::sleep).when(|e: &ApiError| e.transient).notify(
            |e: &ApiError, after: Duration| {
                tracing::warn!(action, error = %e.message, retry_in = ?after, "EC2 call failed; retrying");
                *last.lock().expect("last error poisoned") = Some(e.message.clone());
            },
        );
        match tokio::time::timeout_at(deadline, retried).await {
            Ok(result) => result,
            Err(_) => Err(ApiError {
                action,
                code: None,
                message: match last.into_inner().expect("last error poisoned") {
                    Some(error) => format!("{error} (still failing at the deadline)"),
                    None => "no answer before the deadline".to_string(),
                },
                transient: false,
            }),
        }
    }

    /// One Describe* call listing this server's resources: `describe` gets the `gantry:server`
    /// tag filter followed by `filters`, and reads every page (through the SDK's paginator where
    /// the operation has one); the whole listing runs under the retry policy.
    async fn describe_own<T, E, F, Fut>(
        &self,
        action: &'static str,
        filters: Vec<Filter>,
        deadline: Instant,
        describe: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(Vec<Filter>) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let mut all = vec![tag_filter(TAG_SERVER, &self.config.server_id)];
        all.extend(filters);
        self.call(action, deadline, || describe(all.clone())).await
    }

    /// Instances of this server matching `filters`, in any state but terminated.
    pub(super) async fn instances(&self, filters: Vec<Filter>, deadline: Instant) -> Result<Vec<Instance>, ApiError> {
        let mut all = vec![Filter::builder()
            .name("instance-state-name")
            .set_values(Some(["pending", "running", "shutting-down", "stopping", "stopped"].map(String::from).to_vec()))
            .build()];
        all.extend(filters);
        let reservations = self
            .describe_own("DescribeInstances", all, deadline, |filters| {
                self.client
                    .describe_instances()
                    .set_filters(Some(filters))
                    .into_paginator()
                    .items()
                    .send()
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(reservations.iter().flat_map(|r| r.instances()).cloned().collect())
    }

    /// This server's groups matching `filters`: (group id, build tag).
    pub(super) async fn groups(
        &self,
        filters: Vec<Filter>,
        deadline: Instant,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let groups = self
            .describe_own("DescribeSecurityGroups", filters, deadline, |filters| {
                self.client
                    .describe_security_groups()
                    .set_filters(Some(filters))
                    .into_paginator()
                    .items()
                    .send()
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(groups
            .iter()
            .filter_map(|g| {
                Some((g.group_id()?.to_string(), tag_value(g.tags(), TAG_BUILD).unwrap_or_default().to_string()))
            })
            .collect())
    }

    /// This server's key pairs: (name, host tag). `DescribeKeyPairs` has no pages: one answer
    /// holds them all.
    pub(super) async fn keys(&self, deadline: Instant) -> Result<Vec<(String, Option<String>)>, ApiError> {
        let out = self
            .describe_own("DescribeKeyPairs", Vec::new(), deadline, |filters| {
                self.client.describe_key_pairs().set_filters(Some(filters)).send()
            })
            .await?;
        Ok(out
            .key_pairs()
            .iter()
            .filter(|k| tag_value(k.tags(), TAG_SERVER) == Some(self.config.server_id.as_str()))
            .filter_map(|k| Some((k.key_name()?.to_string(), tag_value(k.tags(), TAG_HOST).map(str::to_string))))
            .collect())
    }
}

/// A tag to put on a resource.
pub(super) fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// A Describe* filter: resources whose tag `key` is `value`.
pub(super) fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

/// The value of tag `key`, if the resource has it.
pub(super) fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// The state an instance was described in.
pub(super) fn state(instance: &Instance) -> Option<InstanceStateName> {
    instance.state().and_then(|s| s.name()).cloned()
}

/// An error of Gantry's own about `action`, never retried.
pub(super) fn invalid(action: &'static str, message: String) -> ApiError {
    ApiError { action, code: None, message, transient: false }
}
