//! `POST /jobs`: each file part is read, checked, stored and queued as it arrives (so a job of a
//! thousand images never sits in memory), then the job is recorded and answered 202. An image
//! the workers could not read gets its refusal as its answer at once; a failure of the store or
//! the queue fails the whole submission (the client sends it again, with its client token to
//! get one job).

use std::sync::Arc;

use imgrec_domain::messages::{now_ms, ClassifyRequest, ClassifyResponse, Outcome, VERSION};
use imgrec_domain::records::{self, Job, JobId, JobImage};
use serde_json::json;
use uuid::Uuid;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use super::JobParams;
use crate::error::UploadError;
use crate::reply;
use crate::state::WebTier;
use crate::upload::body::{self, Upload};
use crate::upload::idempotency::{digest, Fingerprint};
use crate::upload::{check, refusal, UploadRequest};

/// Requests queued in one call (SQS's batch limit).
const QUEUE_BATCH: usize = 10;

/// A job while its files arrive.
struct Incoming {
    id: JobId,
    /// The job its client token named, recorded by an earlier submission.
    earlier: Option<Job>,
    images: Vec<JobImage>,
    fingerprint: Fingerprint,
    /// Stored images' requests not yet queued.
    batch: Vec<ClassifyRequest>,
}

/// The job as accepted: new, or the one a client token named before.
struct Accepted {
    job: Job,
    /// False when a retry found it.
    new: bool,
}

impl WebTier {
    /// `POST /jobs`: 202 with the job's id and `Location`, or why not.
    pub async fn submit_job<S, B>(self: Arc<Self>, request: UploadRequest<S>) -> Response
    where
        S: futures::Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
        B: bytes::Buf + Send + 'static,
    {
        match self.accept_job(request).await {
            Ok(Accepted { job, new }) => {
                if new {
                    self.metrics.jobs.inc();
                    self.metrics.job_images.inc_by(job.images.len() as u64);
                    if job.callback_url.is_some() {
                        tokio::spawn(self.clone().call_back_when_done(job.clone(), 0));
                    }
                }
                let location = format!("/jobs/{}", job.id);
                let mut response = reply::json(
                    StatusCode::ACCEPTED,
                    &json!({ "job_id": job.id, "status_url": location, "images": job.images.len() }),
                );
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
            }
            Err(e) => refusal(e, true),
        }
    }

    async fn accept_job<S, B>(&self, request: UploadRequest<S>) -> Result<Accepted, UploadError>
    where
        S: futures::Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
        B: bytes::Buf + Send + 'static,
    {
        let client = self.client(request.api_key.as_deref())?;
        let mut params = JobParams::parse(&request.query)?;
        if let Some(key) = request.idempotency_key {
            params.set("client_token", key)?;
        }
        if self.waiters.is_closed() {
            return Err(UploadError::ShuttingDown);
        }
        self.admit()?;
        let jobs = &self.settings.jobs;
        let max_file = self.upload_limits.max_file_bytes;
        let multipart = body::multipart(
            request.content_type,
            request.content_length,
            request.body,
            max_file,
            jobs.max_images as u64,
        )?;
        let reading = self.read_job(multipart, params, &client);
        tokio::time::timeout(jobs.body_timeout(), reading)
            .await
            .map_err(|_| UploadError::BodyTimeout(jobs.body_timeout().as_secs()))?
    }

    /// One pass over the parts: parameters before the files, then each file read, checked,
    /// stored and queued in turn.
    async fn read_job(
        &self,
        mut multipart: multer::Multipart<'static>,
        mut params: JobParams,
        client: &str,
    ) -> Result<Accepted, UploadError> {
        let max_file = self.upload_limits.max_file_bytes;
        let mut incoming: Option<Incoming> = None;
        while let Some(mut field) = (multipart.next_field().await).map_err(|e| body::multipart_error(e, max_file))? {
            let mut share = self.upload_limits.body_budget.share();
            let bytes = body::field_bytes(&mut field, max_file, &mut share, true).await?;
            let field_name = field.name().unwrap_or_default().to_owned();
            // A part of the files' fields is an image even without a file name (or with one that
            // is not UTF-8): its refusal is its answer, rather than a field ignored unseen.
            let name = field.file_name().map(str::to_owned);
            let name = name.or_else(|| body::FIELDS.contains(&field_name.as_str()).then(String::new));
            let Some(name) = name else {
                let value = String::from_utf8_lossy(&bytes).into_owned();
                if params.set(&field_name, value)? && incoming.is_some() {
                    return Err(UploadError::BadRequest(format!("send {field_name} before the files")));
                }
                continue;
            };
            if body::left_empty(&name, &bytes) {
                continue;
            }
            let job = match &mut incoming {
                Some(job) => job,
                None => incoming.insert(self.incoming(params.client_token.as_deref(), client).await?),
            };
            self.take_image(job, name, bytes, share).await?;
        }
        let Some(mut job) = incoming else {
            return Err(UploadError::BadRequest(format!(
                "no file: send the images as form fields {:?}",
                body::FIELDS[0]
            )));
        };
        self.queue_batch(&mut job.batch).await?;
        let fingerprint = job.fingerprint.finish();
        let job_id = job.id.clone();
        if let Some(earlier) = job.earlier {
            return same_job(earlier, &fingerprint);
        }
        let job = Job {
            id: job.id,
            created_at_ms: now_ms(),
            fingerprint,
            images: job.images,
            callback_url: params.callback_url,
        };
        if job.callback_url.is_some() {
            // Held before the job is recorded, so that no recorded job's callback goes unheld.
            (self.hold_callback(&job.id, 0).await)
                .map_err(UploadError::unavailable("cannot keep the job's callback"))?;
        }
        let accepted = self.record_job(job, params.client_token.is_some()).await;
        if !matches!(accepted, Ok(Accepted { new: true, .. })) {
            // A retry with the same token recorded it first and holds its callback.
            self.forget_callback(&job_id);
        }
        accepted
    }

    /// One image of the job: stored and queued (in batches), or its refusal kept as its answer;
    /// only fingerprinted when a retry finds the job recorded.
    async fn take_image(
        &self,
        job: &mut Incoming,
        name: String,
        bytes: bytes::Bytes,
        share: crate::upload::Share,
    ) -> Result<(), UploadError> {
        let max = self.settings.jobs.max_images;
        if job.images.len() == max {
            return Err(UploadError::BadRequest(format!("a job holds at most {max} images")));
        }
        job.fingerprint.add(&name, &bytes);
        let (index, request_id) = (job.images.len(), Uuid::new_v4());
        job.images.push(JobImage {
            image: name.clone(),
            request_id,
        });
        if job.earlier.is_some() {
            return Ok(());
        }
        let answer_record = records::job_answer(&job.id, index);
        match self.checked(&name, bytes, share).await? {
            Ok(upload) => {
                let request = self.store(upload, request_id, Some(answer_record.to_string())).await?;
                job.batch.push(request);
                if job.batch.len() == QUEUE_BATCH {
                    self.queue_batch(&mut job.batch).await?;
                }
                Ok(())
            }
            Err(refused) => self.refuse_image(&answer_record, request_id, &name, refused).await,
        }
    }

    async fn queue_batch(&self, batch: &mut Vec<ClassifyRequest>) -> Result<(), UploadError> {
        if !batch.is_empty() {
            self.queue(batch).await?;
            batch.clear();
        }
        Ok(())
    }

    /// A job as its first file arrives: a new random id, or the one the client token names,
    /// with that job if it was recorded.
    async fn incoming(&self, token: Option<&str>, client: &str) -> Result<Incoming, UploadError> {
        let (id, earlier) = match token {
            None => (JobId::random(), None),
            Some(token) => {
                let digest = digest("client_token", client, token)?;
                let id = JobId::from_digest(&digest).expect("a SHA-256 digest is 64 hex digits");
                let earlier = self.job(&id).await?;
                (id, earlier)
            }
        };
        Ok(Incoming {
            id,
            earlier,
            images: Vec::new(),
            fingerprint: Fingerprint::default(),
            batch: Vec::with_capacity(QUEUE_BATCH),
        })
    }

    /// The upload of part `name`, or why a worker could not classify it (the job goes on).
    async fn checked(
        &self,
        name: &str,
        bytes: bytes::Bytes,
        reservation: crate::upload::Share,
    ) -> Result<Result<Upload, UploadError>, UploadError> {
        let key = match body::key_from_file_name(name) {
            Ok(key) => key,
            Err(e) => return Ok(Err(e)),
        };
        if bytes.is_empty() {
            return Ok(Err(UploadError::BadRequest("empty file".into())));
        }
        match check::validate(bytes.clone(), &self.upload_limits).await {
            Ok(_) => Ok(Ok(Upload {
                key,
                bytes,
                reservation,
            })),
            // Only a fault of the image is its own answer; the service's (busy, failed) fail the job.
            Err(e) if e.status().is_client_error() => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// Keeps an image's refusal as its answer.
    async fn refuse_image(
        &self,
        record: &imgrec_domain::ports::ObjectKey,
        request_id: Uuid,
        name: &str,
        refused: UploadError,
    ) -> Result<(), UploadError> {
        let response = ClassifyResponse {
            version: VERSION,
            request_id,
            key: name.to_owned(),
            outcome: Outcome::Rejected {
                reason: refused.to_string(),
            },
            instance: self.name.borrow().clone(),
            timings: None,
        };
        let output = &self.settings.buckets.output;
        records::store_answer(self.adapters.store.as_ref(), output, record.as_str(), &response)
            .await
            .map_err(UploadError::unavailable("cannot keep an image's answer"))
    }

    /// Records the job; with a client token, only if no retry recorded it first.
    async fn record_job(&self, job: Job, once: bool) -> Result<Accepted, UploadError> {
        let output = &self.settings.buckets.output;
        let key = records::job(&job.id);
        let bytes = bytes::Bytes::from(serde_json::to_vec(&job).expect("jobs serialize"));
        let store = &self.adapters.store;
        let unavailable = UploadError::unavailable::<imgrec_domain::ports::PortError>("cannot record the job");
        if !once {
            store.put(output, &key, bytes).await.map_err(unavailable)?;
            return Ok(Accepted { job, new: true });
        }
        if store.put_if_absent(output, &key, bytes).await.map_err(unavailable)? {
            return Ok(Accepted { job, new: true });
        }
        let earlier = self.job(&job.id).await?.ok_or_else(|| UploadError::Unavailable {
            what: "cannot read the job",
            source: anyhow::anyhow!("recorded and gone"),
        })?;
        same_job(earlier, &job.fingerprint)
    }

    /// The job recorded as `id`, if any.
    pub(super) async fn job(&self, id: &JobId) -> Result<Option<Job>, UploadError> {
        let output = &self.settings.buckets.output;
        let bytes = (self.adapters.store.get(output, &records::job(id), None).await)
            .map_err(UploadError::unavailable("cannot read the job"))?;
        bytes
            .map(|b| serde_json::from_slice(&b))
            .transpose()
            .map_err(UploadError::unavailable("cannot read the job"))
    }
}

/// The job a client token named before, if this retry sent the same files.
fn same_job(earlier: Job, fingerprint: &str) -> Result<Accepted, UploadError> {
    if earlier.fingerprint != fingerprint {
        return Err(UploadError::KeyReused("client token"));
    }
    Ok(Accepted {
        job: earlier,
        new: false,
    })
}
