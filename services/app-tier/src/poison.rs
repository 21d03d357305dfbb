//! Poison isolation. A request received more than once may be what brought a worker down (a
//! crash, an out-of-memory kill, a failed batch), so it is classified alone: one bad image never
//! takes its batch-mates down with it again. A worker also holds at most one such request at a
//! time, because every request it holds when it dies comes back with one more receive and would
//! reach the dead-letter queue beside the culprit: the other suspects it received are put back
//! as new messages (`requeued` counts how often, so that this too is bounded).

use imgrec_domain::messages::ClassifyRequest;
use imgrec_domain::ports::Receipt;

/// A received request, decoded.
#[derive(Debug, Clone)]
pub struct Job {
    pub receipt: Receipt,
    pub request: ClassifyRequest,
    pub receive_count: u32,
}

impl Job {
    pub fn is_suspect(&self) -> bool {
        self.receive_count > 1 || self.request.requeued > 0
    }

    /// Whether a stopping worker may give this request back unfinished as a new message, its
    /// receive count starting over: not received more than once (that count keeps it classified
    /// alone), and given back fewer than `max_give_backs` times (past that a give-back counts,
    /// so that a request that hangs every worker until it is stopped still reaches the
    /// dead-letter queue).
    pub fn may_go_back_uncounted(&self, max_give_backs: u32) -> bool {
        self.receive_count <= 1 && self.request.given_back < max_give_backs
    }
}

/// What a worker does with one receive.
#[derive(Debug, Default)]
pub struct Split {
    /// First-time requests, classified together.
    pub batch: Vec<Job>,
    /// Suspects, each classified alone, after the batch is answered.
    pub alone: Vec<Job>,
    /// Suspects to send back as new messages instead of holding them.
    pub requeue: Vec<Job>,
}

/// Splits a receive. A suspect already requeued `max_requeues` times is kept (and classified
/// alone) instead of being requeued again.
pub fn split(jobs: Vec<Job>, max_requeues: u32) -> Split {
    let mut split = Split::default();
    for job in jobs {
        if !job.is_suspect() {
            split.batch.push(job);
        } else if split.alone.is_empty() || job.request.requeued >= max_requeues {
            split.alone.push(job);
        } else {
            split.requeue.push(job);
        }
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u32, receive_count: u32, requeued: u32) -> Job {
        Job {
            receipt: Receipt(n.to_string()),
            request: ClassifyRequest {
                version: imgrec_domain::messages::VERSION,
                request_id: uuid::Uuid::new_v4(),
                key: format!("{n}.jpg"),
                object_version: None,
                submitted_at_ms: 0,
                requeued,
                given_back: 0,
                reply_to: None,
                answer_record: None,
            },
            receive_count,
        }
    }

    fn keys(jobs: &[Job]) -> Vec<&str> {
        jobs.iter().map(|j| j.request.key.as_str()).collect()
    }

    #[test]
    fn first_receives_are_batched_together() {
        let p = split((0..8).map(|n| job(n, 1, 0)).collect(), 3);
        assert_eq!(p.batch.len(), 8);
        assert!(p.alone.is_empty() && p.requeue.is_empty());
    }

    #[test]
    fn a_worker_holds_one_suspect_and_requeues_the_others() {
        let jobs = vec![job(0, 2, 0), job(1, 1, 0), job(2, 2, 0), job(3, 1, 1), job(4, 3, 0)];
        let p = split(jobs, 3);
        assert_eq!(keys(&p.batch), ["1.jpg"]);
        assert_eq!(keys(&p.alone), ["0.jpg"]);
        assert_eq!(keys(&p.requeue), ["2.jpg", "3.jpg", "4.jpg"]);
    }

    #[test]
    fn requeues_are_bounded() {
        let p = split(vec![job(0, 2, 0), job(1, 1, 3), job(2, 2, 2)], 3);
        assert_eq!(keys(&p.alone), ["0.jpg", "1.jpg"]);
        assert_eq!(keys(&p.requeue), ["2.jpg"]);
    }

    #[test]
    fn a_give_back_goes_uncounted_unless_the_request_is_a_suspect_by_its_receives_or_went_back_enough() {
        assert!(job(0, 1, 0).may_go_back_uncounted(3));
        assert!(
            job(0, 1, 2).may_go_back_uncounted(3),
            "requeued: suspect by its body, which goes along"
        );
        assert!(
            !job(0, 2, 0).may_go_back_uncounted(3),
            "its receive count keeps it a suspect"
        );
        let mut given_back = job(0, 1, 0);
        given_back.request.given_back = 2;
        assert!(given_back.may_go_back_uncounted(3));
        given_back.request.given_back = 3;
        assert!(!given_back.may_go_back_uncounted(3));
    }
}
