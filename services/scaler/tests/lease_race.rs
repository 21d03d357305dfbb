//! Two scalers racing for one lease whose renewals are slow, lost or fail after landing: at no
//! moment may a scaler change the fleet unless the lease store says it holds the lease then (so
//! never two at once). Randomized over many seeds on tokio's paused clock: a minute of ticks per
//! seed costs no real time.
//!
//! The lease store is the truth; each call to it is a request that takes a random time to reach it
//! and to come back, may come back as an error although it landed, and lands even if the caller
//! gave up waiting (as an HTTP request to S3 may).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use imgrec_domain::policy::{PolicyConfig, PolicyKind};
use imgrec_domain::ports::{Fleet, FleetChange, Instance, Lease, PortResult, QueueDepth};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scaler::{Backlog, Scaler};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(200);
const RUN: Duration = Duration::from_secs(60);
const SEEDS: u64 = 300;

/// The lease as the backend stores it: its holder and until when.
#[derive(Default)]
struct Store {
    held: Mutex<Option<(String, Instant)>>,
}

impl Store {
    fn holds(&self, who: &str, at: Instant) -> bool {
        matches!(&*self.held.lock().unwrap(), Some((holder, until)) if holder == who && *until > at)
    }
}

/// A delay: usually short, sometimes longer than the lease (a call the SDK retries for seconds).
fn delay(rng: &mut StdRng) -> Duration {
    if rng.random_bool(0.1) {
        Duration::from_millis(rng.random_range(1_000..8_000))
    } else {
        Duration::from_millis(rng.random_range(0..150))
    }
}

struct SlowLease {
    store: Arc<Store>,
    me: String,
    rng: Mutex<StdRng>,
}

#[async_trait]
impl Lease for SlowLease {
    async fn hold(&self, ttl: Duration) -> anyhow::Result<bool> {
        let (there, back, fails) = {
            let mut rng = self.rng.lock().unwrap();
            (delay(&mut rng), delay(&mut rng), rng.random_bool(0.2))
        };
        let (store, me) = (self.store.clone(), self.me.clone());
        // The request lands whether or not the caller still waits for it.
        let landed = tokio::spawn(async move {
            tokio::time::sleep(there).await;
            let now = Instant::now();
            let mut held = store.held.lock().unwrap();
            let free = match &*held {
                Some((holder, until)) => holder == &me || *until <= now,
                None => true,
            };
            if free {
                *held = Some((me, now + ttl));
            }
            free
        });
        let holds = landed.await?;
        tokio::time::sleep(back).await;
        if fails {
            anyhow::bail!("the lease store did not answer in time");
        }
        Ok(holds)
    }

    async fn release(&self) -> anyhow::Result<()> {
        let mut held = self.store.held.lock().unwrap();
        if held.as_ref().is_some_and(|(holder, _)| holder == &self.me) {
            *held = None;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "scaler"
    }

    fn holder(&self) -> &str {
        &self.me
    }
}

/// What the race saw: fleet changes made, and those made without holding the lease.
#[derive(Default)]
struct Record {
    acts: u64,
    acts_by: [u64; 2],
    violations: Vec<String>,
}

/// A fleet whose every change takes a while and is checked against the store as it starts and as
/// it ends.
struct CheckedFleet {
    store: Arc<Store>,
    me: String,
    index: usize,
    record: Arc<Mutex<Record>>,
    rng: Mutex<StdRng>,
}

#[async_trait]
impl Fleet for CheckedFleet {
    async fn instances(&self) -> PortResult<Vec<Instance>> {
        Ok(Vec::new())
    }

    async fn scale_to(&self, _: usize, _: usize) -> PortResult<FleetChange> {
        let took = Duration::from_millis(self.rng.lock().unwrap().random_range(0..1_500));
        let started = Instant::now();
        self.check(started, "starting");
        tokio::time::sleep(took).await;
        self.check(Instant::now(), "finishing");
        let mut record = self.record.lock().unwrap();
        record.acts += 1;
        record.acts_by[self.index] += 1;
        Ok(FleetChange::default())
    }
}

impl CheckedFleet {
    fn check(&self, at: Instant, what: &str) {
        if !self.store.holds(&self.me, at) {
            let held = self.store.held.lock().unwrap().clone();
            let state = match held {
                Some((holder, until)) if until > at => format!("{holder} holds the lease"),
                Some((holder, until)) => format!("{holder}'s lease expired {:?} before", at - until),
                None => "nobody holds the lease".into(),
            };
            self.record
                .lock()
                .unwrap()
                .violations
                .push(format!("{} {what} a fleet change while {state}", self.me));
        }
    }
}

struct Waiting;

#[async_trait]
impl Backlog for Waiting {
    async fn backlog(&self) -> PortResult<QueueDepth> {
        Ok(QueueDepth {
            visible: 50,
            in_flight: 0,
        })
    }
}

fn config() -> PolicyConfig {
    PolicyConfig {
        min: 0,
        max: 4,
        target_latency: Duration::from_secs(2),
        service_time: Duration::from_millis(50),
        boot_time: Duration::from_secs(1),
        scale_in_after: Duration::from_secs(5),
    }
}

async fn race(seed: u64) -> Record {
    let store = Arc::new(Store::default());
    let record = Arc::new(Mutex::new(Record::default()));
    let (stop, shutdown) = imgrec_runtime::shutdown::Shutdown::new();
    let mut runs = Vec::new();
    for index in 0..2 {
        let me = format!("scaler-{index}");
        let rng = |salt: u64| Mutex::new(StdRng::seed_from_u64(seed * 4 + salt));
        let lease = SlowLease {
            store: store.clone(),
            me: me.clone(),
            rng: rng(index as u64),
        };
        let fleet = CheckedFleet {
            store: store.clone(),
            me,
            index,
            record: record.clone(),
            rng: rng(2 + index as u64),
        };
        let scaler = Scaler::observing(PolicyKind::Default.build(config()), Arc::new(Waiting), Arc::new(fleet))
            .with_lease(Arc::new(lease), TTL);
        runs.push(tokio::spawn(scaler.run(TICK, shutdown.clone())));
    }
    tokio::time::sleep(RUN).await;
    stop.stop();
    for run in runs {
        let _ = run.await.unwrap();
    }
    Arc::try_unwrap(record).ok().unwrap().into_inner().unwrap()
}

#[tokio::test(start_paused = true)]
async fn two_scalers_never_act_at_once_whatever_the_lease_store_does() {
    let (mut acts, mut by, mut violations) = (0, [0, 0], Vec::new());
    for seed in 0..SEEDS {
        let record = race(seed).await;
        acts += record.acts;
        by[0] += record.acts_by[0];
        by[1] += record.acts_by[1];
        violations.extend(record.violations.into_iter().map(|v| format!("seed {seed}: {v}")));
    }
    println!(
        "lease race: {SEEDS} seeds x {}s, {acts} fleet changes ({} and {}), {} made without the lease",
        RUN.as_secs(),
        by[0],
        by[1],
        violations.len()
    );
    assert!(violations.is_empty(), "{:#?}", &violations[..violations.len().min(5)]);
    // Not vacuous: the scalers did act, both of them, most of the time.
    let ticks = SEEDS * RUN.as_millis() as u64 / TICK.as_millis() as u64;
    assert!(acts > ticks / 10, "only {acts} fleet changes in {ticks} ticks");
    assert!(by[0] > 0 && by[1] > 0, "{by:?}");
}
