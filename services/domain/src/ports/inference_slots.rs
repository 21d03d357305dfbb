//! `InferenceSlots`: the cores that instances sharing one machine share. A model run holds a
//! slot, so that however many instances run on a machine, no more model runs are busy at once
//! than it has cores: more would only fight over the cores and their caches.

/// Held for one model run; the slot frees when it is dropped.
pub type SlotGuard = Box<dyn Send>;

pub trait InferenceSlots: Send + Sync + 'static {
    /// Waits for a free slot (blocking: called on the inference thread).
    fn hold(&self) -> SlotGuard;
}

/// One machine per instance (EC2), or no limit asked: every run goes at once.
pub struct Unlimited;

impl InferenceSlots for Unlimited {
    fn hold(&self) -> SlotGuard {
        Box::new(())
    }
}
