//! `InferenceSlots`: the cores that instances sharing one machine share. An instance holds a slot
//! from taking requests until their model runs are done, so that however many instances run on a
//! machine, no more of them take work and run the model at once than it has cores: more would
//! only fight over the cores and their caches, and hold requests that a running one could take.

/// A held slot; it frees when dropped.
pub type SlotGuard = Box<dyn Send>;

pub trait InferenceSlots: Send + Sync + 'static {
    /// A slot, if one is free now.
    fn try_hold(&self) -> Option<SlotGuard>;
    /// Waits for a free slot (blocking: call it off the async threads).
    fn hold(&self) -> SlotGuard;
}

/// One machine per instance (EC2), or no limit asked: every instance works at once.
pub struct Unlimited;

impl InferenceSlots for Unlimited {
    fn try_hold(&self) -> Option<SlotGuard> {
        Some(Box::new(()))
    }

    fn hold(&self) -> SlotGuard {
        Box::new(())
    }
}
