//! A job's callback: once every image has its answer, the web tier that accepted the job POSTs
//! the job's status (as `GET /jobs/{id}` shows it) to the callback URL, trying a few times with
//! back-off; if that web tier dies first, another takes the callback over (`callback_lease`). The
//! callback never reaches a link-local address (the instance metadata service).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use imgrec_domain::messages::now_ms;
use imgrec_domain::records::Job;
use reqwest::Url;

use crate::error::UploadError;
use crate::state::WebTier;

/// How often the accepting web tier looks at the job's progress.
const POLL: Duration = Duration::from_secs(2);
const MAX_URL_LEN: usize = 2048;

/// `url` if it is one a callback can go to: http or https, with a host.
pub fn check_url(url: &str) -> Result<String, UploadError> {
    let bad = |why: &str| UploadError::BadRequest(format!("callback_url {why}"));
    if url.len() > MAX_URL_LEN {
        return Err(bad(&format!("is longer than {MAX_URL_LEN} characters")));
    }
    let parsed = Url::parse(url).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(bad("must be an http or https URL with a host"));
    }
    Ok(parsed.to_string())
}

/// Addresses a callback never goes to: link-local (the instance metadata service among them),
/// EC2's own IPv6 services (`fd00:ec2::254`, the metadata service where IPv6 is enabled; DNS at
/// `::253`, time at `::123`), unspecified, multicast and broadcast.
fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_link_local() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast(),
        IpAddr::V6(ip) => {
            (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.segments()[..2] == [0xfd00, 0x0ec2]
                || ip.is_unspecified()
                || ip.is_multicast()
                || ip.to_ipv4_mapped().is_some_and(|v4| forbidden(IpAddr::V4(v4)))
        }
    }
}

/// How watching a job for its callback ended.
enum Watched {
    /// Delivered, given up on after every attempt, or the job expired first: the lease goes.
    Done,
    /// This web tier stops, or another holds the callback now.
    LetGo,
}

impl WebTier {
    /// Waits for the job to finish, then calls its callback, while this web tier holds the
    /// callback as `generation` (renewing the lease beside it: the watch ends if another web tier
    /// took the callback over).
    pub(super) async fn call_back_when_done(self: Arc<Self>, job: Job, generation: u64) {
        let Some(url) = job.callback_url.clone() else { return };
        // Let go: on a stop, `release_callbacks` gives the lease up; taken over, it is another's.
        tokio::select! {
            watched = self.watch_and_deliver(&job, &url, generation) => {
                if let Watched::Done = watched {
                    self.drop_callback(&job.id).await;
                }
            }
            () = self.keep_callback(&job.id, generation) => {}
        }
    }

    async fn watch_and_deliver(&self, job: &Job, url: &str, generation: u64) -> Watched {
        let kept_until = job.created_at_ms + self.settings.jobs.retention_s * 1000;
        let report = loop {
            if self.waiters.is_closed() {
                // Given up with the others on the stop (`release_callbacks`), for another web tier.
                return Watched::LetGo;
            }
            if now_ms() > kept_until {
                tracing::warn!(job = %job.id, "the job's callback was not sent: the job did not finish while it was kept");
                return Watched::Done;
            }
            match self.progress(job.clone()).await {
                Ok(progress) if progress.pending() == 0 => break progress.report(crate::jobs::REPORT_TOP),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, job = %job.id, "cannot read the job's progress"),
            }
            tokio::time::sleep(POLL).await;
        };
        // The lease may have lapsed unseen (renewals that failed): no delivery if it was taken over.
        match self.renew_callback(&job.id, generation).await {
            Ok(true) => {}
            Ok(false) => return Watched::LetGo,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %format!("{e:#}"), "cannot renew the lease on a job's callback; delivering it")
            }
        }
        let jobs = &self.settings.jobs;
        for attempt in 0..jobs.callback_attempts {
            match deliver(url, &report, jobs.callback_timeout()).await {
                Ok(()) => {
                    tracing::info!(job = %job.id, "job's callback delivered");
                    self.metrics.callbacks.with_label_values(&["delivered"]).inc();
                    return Watched::Done;
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, attempt = attempt + 1, error = %format!("{e:#}"), "job's callback failed")
                }
            }
            if attempt + 1 < jobs.callback_attempts {
                tokio::time::sleep(Duration::from_secs(1 << attempt.min(6))).await;
            }
        }
        tracing::warn!(job = %job.id, attempts = jobs.callback_attempts, "gave up on the job's callback");
        self.metrics.callbacks.with_label_values(&["gave_up"]).inc();
        Watched::Done
    }
}

/// One POST of the job's status, to an address checked and then pinned (so that a second DNS
/// answer cannot send it elsewhere); any 2xx is delivered.
async fn deliver(url: &str, report: &serde_json::Value, timeout: Duration) -> anyhow::Result<()> {
    let parsed = Url::parse(url)?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let lookup = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let addrs: Vec<SocketAddr> = tokio::time::timeout(timeout, tokio::net::lookup_host((lookup.as_str(), port)))
        .await
        .map_err(|_| anyhow::anyhow!("resolving {host} timed out"))??
        .collect();
    let addr = addrs
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("{host} has no address"))?;
    if let Some(bad) = addrs.iter().find(|a| forbidden(a.ip())) {
        anyhow::bail!("{host} resolves to {}, where callbacks never go", bad.ip());
    }
    let client = reqwest::Client::builder()
        .resolve(&host, addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()?;
    let response = client.post(parsed).json(report).send().await?;
    anyhow::ensure!(response.status().is_success(), "answered {}", response.status());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_go_to_http_hosts_and_never_to_link_local_addresses() {
        assert!(check_url("https://example.com/done?x=1").is_ok());
        assert!(check_url("http://127.0.0.1:8080/").is_ok());
        for bad in ["ftp://example.com/", "file:///etc/passwd", "not a url", "http://"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("http://x/{}", "a".repeat(MAX_URL_LEN))).is_err());
        for ip in [
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "fd00:ec2::253",
        ] {
            assert!(forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.5", "93.184.216.34", "::1", "fd00:ec3::1"] {
            assert!(!forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_callback_to_the_metadata_service_is_refused_before_any_request() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
        ] {
            let err = deliver(url, &serde_json::json!({}), Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("never go"), "{url}: {err}");
        }
    }
}
