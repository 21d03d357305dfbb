//! What an EC2 instance learns about itself from the instance metadata service (IMDSv2): where
//! its Auto Scaling group wants it (a warm pool, or in service), and a Spot interruption notice.

use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use aws_config::imds::client::error::ImdsError;
use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use imgrec_domain::ports::{PortError, PortResult};

pub struct Imds {
    client: aws_config::imds::Client,
}

impl Default for Imds {
    fn default() -> Self {
        Self {
            client: aws_config::imds::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .read_timeout(Duration::from_secs(2))
                .build(),
        }
    }
}

impl Imds {
    /// One that asks `endpoint` instead of EC2's (a fake, in tests).
    #[cfg(test)]
    pub(crate) fn at(endpoint: &str) -> Self {
        let client = aws_config::imds::Client::builder()
            .endpoint(endpoint)
            .expect("a valid URL");
        Self { client: client.build() }
    }

    /// `path`'s value, or `None` where the service has none (404).
    async fn get(&self, path: &str) -> PortResult<Option<String>> {
        match self.client.get(path).await {
            Ok(value) => Ok(Some(value.as_ref().to_owned())),
            Err(ImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(PortError::Transient(anyhow!("instance metadata {path}: {e}"))),
        }
    }

    /// "InService", "Warmed:Stopped", "Warmed:Hibernated", ...; `None` outside a group.
    pub async fn target_lifecycle_state(&self) -> PortResult<Option<String>> {
        self.get("/latest/meta-data/autoscaling/target-lifecycle-state").await
    }

    /// When EC2 takes this Spot instance back, once it has sent the two-minute notice.
    pub async fn spot_reclaim_at(&self) -> PortResult<Option<SystemTime>> {
        let Some(notice) = self.get("/latest/meta-data/spot/instance-action").await? else {
            return Ok(None);
        };
        reclaim_time(&notice).map(Some)
    }
}

/// The `time` of an instance-action notice: `{"action": "terminate", "time": "2026-12-04T08:22:00Z"}`.
fn reclaim_time(notice: &str) -> PortResult<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Notice {
        time: String,
    }
    let bad = |e: &dyn std::fmt::Display| PortError::Permanent(anyhow!("unreadable Spot notice {notice:?}: {e}"));
    let notice: Notice = serde_json::from_str(notice).map_err(|e| bad(&e))?;
    let at = DateTime::from_str(&notice.time, Format::DateTime).map_err(|e| bad(&e))?;
    SystemTime::try_from(at).map_err(|e| bad(&e))
}

/// An instance metadata service on 127.0.0.1 that answers what the test sets: a session token
/// for any PUT, a set path's value, 404 for the rest.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Clone, Default)]
    pub struct FakeImds {
        values: Arc<Mutex<HashMap<String, String>>>,
        pub url: String,
    }

    impl FakeImds {
        pub async fn start() -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let fake = Self { url, ..Self::default() };
            let values = fake.values.clone();
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let values = values.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0; 4096];
                        // One request per connection: the client's requests are small and whole.
                        let Ok(n) = socket.read(&mut buf).await else { return };
                        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let mut words = request.split_whitespace();
                        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                        let answer = match (method, values.lock().unwrap().get(path).cloned()) {
                            ("PUT", _) => http(200, "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n", "token"),
                            (_, Some(value)) => http(200, "", &value),
                            (_, None) => http(404, "", ""),
                        };
                        let _ = socket.write_all(answer.as_bytes()).await;
                    });
                }
            });
            fake
        }

        pub fn set(&self, path: &str, value: &str) {
            self.values.lock().unwrap().insert(path.to_owned(), value.to_owned());
        }
    }

    fn http(status: u16, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status} X\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_says_when_the_instance_goes() {
        let at = reclaim_time(r#"{"action": "terminate", "time": "2026-12-04T08:22:00Z"}"#).unwrap();
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 1_796_372_520);
        assert!(reclaim_time(r#"{"action": "stop"}"#).is_err());
        assert!(reclaim_time("not json").is_err());
    }
}
