//! Admission control at the door: an upload that the pool grown to its cap cannot answer within
//! the response timeout is refused before its body is read (`policy::admission` judges).

use std::sync::atomic::Ordering;

use imgrec_domain::policy::admission::{Load, Verdict};
use imgrec_domain::ports::InstanceState;

use crate::error::UploadError;
use crate::state::WebTier;

impl WebTier {
    pub(crate) fn admit(&self) -> Result<(), UploadError> {
        let Some(admission) = &self.admission else {
            return Ok(());
        };
        let verdict = admission.judge(&self.load());
        if let Verdict::Refuse { retry_after } = verdict {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(UploadError::Overloaded { retry_after });
        }
        Ok(())
    }

    /// The load as the scaler last saw it (a tick ago at most); this web tier's own waiting
    /// uploads count at once, so that a burst here is seen before the next tick.
    pub fn load(&self) -> Load {
        let Some(scaler) = &self.scaler else {
            return Load::default();
        };
        let s = scaler.status.read().unwrap_or_else(|p| p.into_inner());
        Load {
            backlog: s.backlog.total().max(self.waiters.len() as u64),
            running: s.instances.iter().filter(|i| i.state == InstanceState::Running).count(),
            completion_rate: s.completion_rate,
            busy: s.instances.iter().filter(|i| i.busy).count(),
        }
    }
}
