//! One discrete-event run: a queue with SQS-like batch receive, instances that boot (cold or from
//! the warm pool), take batches, drain when retired or interrupted, and the real `Scaler` ticking
//! on the simulated clock, observing the simulated queue and fleet (`adapters`). Every
//! instance-second is counted by purchase option, and the warm pool's waiting time apart.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use imgrec_domain::policy::PolicyKind;
use imgrec_domain::ports::fleet::instance_name;
use imgrec_domain::ports::{FleetChange, Instance, InstanceState, QueueDepth};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp, LogNormal, Normal};

use super::adapters::World;
use super::capacity::Purchase;
use super::{BootTime, Profile, Row, Scenario, Series};
use crate::Scaler;

/// How long before a Spot instance is reclaimed its draining worker stops taking work: the
/// worker's lead on EC2 (`reclaim_lead`: its 4 s drain deadline, a whole 20 s long poll, 5 s).
const DRAIN_MARGIN_S: f64 = 29.0;

/// Simulated time in microseconds: exact ordering, no float drift.
type Micros = u64;

fn micros(seconds: f64) -> Micros {
    (seconds.max(0.0) * 1e6).round() as Micros
}

fn seconds(t: Micros) -> f64 {
    t as f64 / 1e6
}

/// Simulated time as the wall clock the policy reads.
fn clock(t: Micros) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_micros(t)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    // Order among simultaneous events: arrivals first, so a tick sees them.
    Arrival,
    Ready(usize),
    BatchDone(usize),
    /// A Spot interruption notice for an instance.
    Notice(usize),
    /// Near the end of a notice a draining worker stops taking work.
    Drain(usize),
    /// The end of a notice: EC2 takes the instance back.
    Reclaimed(usize),
    /// Requests hidden with a vanished worker become visible again.
    Visible(usize),
    /// An instance launched into the warm pool is initialised and waits there.
    Warmed,
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Booting,
    Idle,
    Busy,
    Gone,
}

struct SimInstance {
    name: String,
    launched: Micros,
    purchase: Purchase,
    /// Set by an interruption notice: EC2 bills it until it is reclaimed.
    reclaim_at: Option<Micros>,
    /// Draining after a notice: shown to the scaler as stopping, still working.
    leaving: bool,
    phase: Phase,
    stopping: bool,
    /// Arrival times of the requests it holds.
    batch: Vec<Micros>,
}

/// What one run measured, with the time series for the plots.
pub struct SimRun {
    pub row: Row,
    pub series: Series,
}

struct Sim<'a> {
    profile: &'a Profile,
    rng: StdRng,
    boot: Normal<f64>,
    warm_start: Option<(Normal<f64>, f64)>,
    jitter: LogNormal<f64>,
    /// Seconds from a Spot launch to its interruption notice.
    interruption: Option<Exp<f64>>,
    events: BinaryHeap<Reverse<(Micros, Event, u64)>>,
    seq: u64,
    queue: VecDeque<Micros>,
    in_flight: usize,
    instances: Vec<SimInstance>,
    /// Ids of instances not gone, and of those waiting for work.
    live: Vec<usize>,
    idle: Vec<usize>,
    latencies: Vec<f64>,
    completions: VecDeque<Micros>,
    last_completion: Micros,
    instance_micros: u128,
    spot_micros: u128,
    warm: WarmPoolState,
    /// Requests of vanished workers, hidden until their visibility timeout.
    hidden: Vec<Vec<Micros>>,
    interruptions: u64,
    visibility_waits: u64,
    peak: usize,
    actions: u64,
    max_waiting_at_cap: usize,
}

impl Sim<'_> {
    fn schedule(&mut self, at: Micros, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, event, self.seq)));
    }

    fn live(&self) -> impl Iterator<Item = &SimInstance> {
        self.live.iter().map(|&id| &self.instances[id])
    }

    /// Takes `id` out of service: EC2 bills it until now (or until reclaimed, if interrupted);
    /// a retired On-Demand one goes back to the warm pool when the pool reuses and has room.
    fn stop(&mut self, id: usize, now: Micros) {
        let instance = &mut self.instances[id];
        instance.phase = Phase::Gone;
        let billed = u128::from(instance.reclaim_at.unwrap_or(now).max(now) - instance.launched);
        self.instance_micros += billed;
        if instance.purchase == Purchase::Spot {
            self.spot_micros += billed;
        }
        let reusable = instance.purchase == Purchase::OnDemand && instance.reclaim_at.is_none();
        self.live.retain(|&i| i != id);
        self.idle.retain(|&i| i != id);
        if reusable && self.warm.reuse_on_scale_in && self.warm.has_room() {
            self.warm.returned(now);
        }
    }

    /// A Spot interruption notice. A draining worker says it is leaving (the scaler replaces it
    /// at once), keeps working while the notice lasts, and `DRAIN_MARGIN_S` before its end
    /// stops taking work and finishes its batch; one that does not drain works on, unaware,
    /// until EC2 reclaims it.
    fn notice(&mut self, id: usize, now: Micros) {
        if self.instances[id].phase == Phase::Gone {
            return;
        }
        self.interruptions += 1;
        let reclaim = now + micros(self.profile.notice_s);
        self.instances[id].reclaim_at = Some(reclaim);
        self.schedule(reclaim, Event::Reclaimed(id));
        if self.profile.capacity.spot.as_ref().is_some_and(|s| s.drain) {
            self.instances[id].leaving = true;
            let drain_at = reclaim.saturating_sub(micros(DRAIN_MARGIN_S)).max(now);
            self.schedule(drain_at, Event::Drain(id));
        }
    }

    fn drain(&mut self, id: usize, now: Micros) {
        let instance = &mut self.instances[id];
        if instance.phase == Phase::Gone {
            return;
        }
        instance.stopping = true;
        if instance.phase != Phase::Busy {
            self.stop(id, now);
        }
    }

    /// EC2 takes the instance back: what it held waits out its visibility timeout.
    fn reclaimed(&mut self, id: usize, now: Micros) {
        if self.instances[id].phase == Phase::Gone {
            return;
        }
        let held = std::mem::take(&mut self.instances[id].batch);
        if !held.is_empty() {
            self.in_flight -= held.len();
            self.visibility_waits += held.len() as u64;
            self.hidden.push(held);
            let at = now + micros(self.profile.visibility_timeout_s);
            self.schedule(at, Event::Visible(self.hidden.len() - 1));
        }
        self.stop(id, now);
    }

    fn visible(&mut self, index: usize, now: Micros) {
        let requests = std::mem::take(&mut self.hidden[index]);
        self.queue.extend(requests);
        while !self.queue.is_empty() {
            match self.idle.pop() {
                Some(id) => self.take(id, now),
                None => break,
            }
        }
    }

    /// An instance ready for work takes up to a batch (a long poll returns as soon as there is any).
    fn take(&mut self, id: usize, now: Micros) {
        let n = self.queue.len().min(self.profile.batch_size);
        let instance = &mut self.instances[id];
        if n == 0 || instance.stopping {
            instance.phase = Phase::Idle;
            if !instance.stopping {
                self.idle.push(id);
            }
            return;
        }
        instance.batch = self.queue.drain(..n).collect();
        instance.phase = Phase::Busy;
        self.in_flight += n;
        let work = n as f64 * self.profile.service_time_s * self.jitter.sample(&mut self.rng);
        self.schedule(now + micros(work), Event::BatchDone(id));
    }

    fn arrival(&mut self, now: Micros) {
        self.queue.push_back(now);
        while !self.queue.is_empty() {
            match self.idle.pop() {
                Some(id) => self.take(id, now),
                None => break,
            }
        }
    }

    fn batch_done(&mut self, id: usize, now: Micros) {
        if self.instances[id].phase != Phase::Busy {
            // Reclaimed mid-batch: its requests were hidden, not answered.
            return;
        }
        let batch = std::mem::take(&mut self.instances[id].batch);
        self.in_flight -= batch.len();
        for arrived in batch {
            self.latencies.push(seconds(now - arrived));
            self.completions.push_back(now);
        }
        self.last_completion = now;
        if self.instances[id].stopping {
            self.stop(id, now);
        } else {
            self.take(id, now);
        }
    }

    fn ready(&mut self, id: usize, now: Micros) {
        match (self.instances[id].phase, self.instances[id].stopping) {
            (Phase::Booting, true) => self.stop(id, now),
            (Phase::Booting, false) => self.take(id, now),
            _ => {}
        }
    }

    fn observe(&mut self, now: Micros) -> (QueueDepth, Vec<Instance>, Option<f64>) {
        let instances = self
            .live()
            .map(|i| Instance {
                name: i.name.clone(),
                state: match (i.stopping || i.leaving, i.phase) {
                    (true, _) => InstanceState::Stopping,
                    (false, Phase::Booting) => InstanceState::Pending,
                    _ => InstanceState::Running,
                },
                launched_at: clock(i.launched),
                busy: i.phase == Phase::Busy,
                purchase: None,
            })
            .collect();
        let window = micros(60.0);
        while self.completions.front().is_some_and(|t| now - *t > window) {
            self.completions.pop_front();
        }
        let rate = self
            .profile
            .completion_rate_known
            .then(|| self.completions.len() as f64 / seconds(now.clamp(1, window)));
        let depth = QueueDepth {
            visible: self.queue.len() as u64,
            in_flight: self.in_flight as u64,
        };
        (depth, instances, rate)
    }
}

/// Runs `kind` on `scenario`: the same seed gives the same arrivals, boots and service times.
pub fn simulate(profile: &Profile, scenario: &Scenario, kind: PolicyKind, seed: u64) -> SimRun {
    // The scaler logs each scaling action; thousands of simulated ones are not news.
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        run(profile, scenario, kind, seed)
    })
}

fn run(profile: &Profile, scenario: &Scenario, kind: PolicyKind, seed: u64) -> SimRun {
    let config = &profile.policy;
    let world = World::default();
    let mut scaler = Scaler::observing(
        kind.build(config.clone()),
        Arc::new(world.clone()),
        Arc::new(world.clone()),
    )
    .with_clock(Arc::new(world.clone()))
    .with_completion_rate(Box::new(world.clone()));
    let mut sim = Sim::new(profile, seed, scenario.arrivals.len());
    // Idle at its minimum before the scenario: those instances are up.
    for k in 1..=config.min {
        sim.launch(instance_name(k), 0);
        sim.instances[k - 1].phase = Phase::Idle;
        sim.idle.push(k - 1);
    }
    for &t in &scenario.arrivals {
        sim.schedule(micros(t), Event::Arrival);
    }
    sim.schedule(0, Event::Tick);
    let tick = micros(profile.tick_s);
    let last_arrival = micros(scenario.arrivals.last().copied().unwrap_or(0.0));
    let give_up = last_arrival + micros(4.0 * 3600.0);
    let total = scenario.arrivals.len();
    let mut series = Series::default();
    let mut back_at_min = None;

    while let Some(Reverse((now, event, _))) = sim.events.pop() {
        match event {
            Event::Arrival => sim.arrival(now),
            Event::Ready(id) => sim.ready(id, now),
            Event::BatchDone(id) => sim.batch_done(id, now),
            Event::Notice(id) => sim.notice(id, now),
            Event::Drain(id) => sim.drain(id, now),
            Event::Reclaimed(id) => sim.reclaimed(id, now),
            Event::Visible(index) => sim.visible(index, now),
            Event::Warmed => sim.warm.refilled(now),
            Event::Tick => {
                scale(&mut scaler, &world, &mut sim, now);
                let live = sim.record(now, &mut series);
                if sim.latencies.len() == total && live <= config.min {
                    back_at_min = Some(now);
                    break;
                }
                if now < give_up {
                    sim.schedule(now + tick, Event::Tick);
                }
            }
        }
    }
    let end = back_at_min.unwrap_or(give_up);
    for id in sim.live.clone() {
        sim.stop(id, end);
    }
    sim.warm.settle(end);
    SimRun {
        row: sim.row(scenario, kind, back_at_min),
        series,
    }
}

/// The real scaler's observe-decide-apply round on what the simulation shows at `now`; its fleet is
/// this simulation's, whose plan picks names and the instances to retire.
fn scale(scaler: &mut Scaler, world: &World, sim: &mut Sim, now: Micros) {
    let (backlog, instances, completion_rate) = sim.observe(now);
    *world.lock() = super::adapters::Observed {
        now: Some(clock(now)),
        backlog,
        instances,
        completion_rate,
        ..Default::default()
    };
    futures::executor::block_on(scaler.tick()).expect("a simulated tick cannot fail");
    let change = std::mem::take(&mut world.lock().change);
    sim.apply(change, now);
}

impl<'a> Sim<'a> {
    fn new(profile: &'a Profile, seed: u64, requests: usize) -> Self {
        let normal = |b: &BootTime| Normal::new(b.mean_s, b.sd_s).expect("a valid boot time distribution");
        let capacity = &profile.capacity;
        let warm_start = capacity.warm_pool.as_ref().map(|pool| {
            let start = profile.warm_start.of(pool.state);
            (normal(start), start.min_s)
        });
        let interruption = capacity
            .spot
            .as_ref()
            .filter(|s| s.interruptions_per_hour > 0.0)
            .map(|s| Exp::new(s.interruptions_per_hour / 3600.0).expect("a positive interruption rate"));
        Sim {
            profile,
            rng: StdRng::seed_from_u64(seed),
            boot: normal(&profile.boot),
            warm_start,
            jitter: LogNormal::new(0.0, 0.1).expect("a valid service time jitter"),
            interruption,
            events: BinaryHeap::new(),
            seq: 0,
            queue: VecDeque::new(),
            in_flight: 0,
            instances: Vec::new(),
            live: Vec::new(),
            idle: Vec::new(),
            latencies: Vec::with_capacity(requests),
            completions: VecDeque::new(),
            last_completion: 0,
            instance_micros: 0,
            spot_micros: 0,
            warm: WarmPoolState::new(capacity.warm_pool.as_ref()),
            hidden: Vec::new(),
            interruptions: 0,
            visibility_waits: 0,
            peak: 0,
            actions: 0,
            max_waiting_at_cap: 0,
        }
    }

    /// Boots what the fleet launched and stops what it retired (a busy one after its batch).
    fn apply(&mut self, change: FleetChange, now: Micros) {
        for name in change.launch {
            self.launch(name, now);
        }
        for name in change.retire {
            if let Some(&id) = self.live.iter().find(|&&id| self.instances[id].name == name) {
                self.actions += 1;
                match self.instances[id].phase {
                    Phase::Busy => self.instances[id].stopping = true,
                    _ => self.stop(id, now),
                }
            }
        }
    }

    /// Starts an instance: On-Demand up to the Spot base (from the warm pool while it lasts, the
    /// group then launching a refill into it), Spot beyond.
    fn launch(&mut self, name: String, now: Micros) {
        let id = self.instances.len();
        let on_demand = self
            .live()
            .filter(|i| i.purchase == Purchase::OnDemand && !i.stopping)
            .count();
        let purchase = match &self.profile.capacity.spot {
            Some(spot) if on_demand >= spot.on_demand_base => Purchase::Spot,
            _ => Purchase::OnDemand,
        };
        let cold = self.boot.sample(&mut self.rng).max(self.profile.boot.min_s);
        let boot_s = match (self.warm_start, purchase) {
            (Some((warm, floor)), Purchase::OnDemand) if self.warm.ready > 0 => {
                self.warm.take(now);
                // The refill initialises like any cold launch, billed while it runs.
                self.warm.refilling += 1;
                self.warm.initialising_micros += u128::from(micros(cold));
                self.schedule(now + micros(cold), Event::Warmed);
                warm.sample(&mut self.rng).max(floor)
            }
            _ => cold,
        };
        if purchase == Purchase::Spot {
            if let Some(gap) = self.interruption {
                let at = now + micros(gap.sample(&mut self.rng));
                self.schedule(at, Event::Notice(id));
            }
        }
        self.instances.push(SimInstance {
            name,
            launched: now,
            purchase,
            reclaim_at: None,
            leaving: false,
            phase: Phase::Booting,
            stopping: false,
            batch: Vec::new(),
        });
        self.live.push(id);
        self.schedule(now + micros(boot_s), Event::Ready(id));
        self.actions += 1;
    }

    /// Records the pool and the backlog after a tick; returns the instances alive.
    fn record(&mut self, now: Micros, series: &mut Series) -> usize {
        let live = self.live().count();
        let serving = self.live().filter(|i| !i.stopping).count();
        self.peak = self.peak.max(live);
        if serving >= self.profile.policy.max {
            self.max_waiting_at_cap = self.max_waiting_at_cap.max(self.queue.len());
        }
        series.push(seconds(now), live, self.queue.len() + self.in_flight);
        live
    }

    fn row(self, scenario: &Scenario, kind: PolicyKind, back_at_min: Option<Micros>) -> Row {
        let first_arrival = micros(scenario.arrivals.first().copied().unwrap_or(0.0));
        let mut latencies = self.latencies;
        latencies.sort_by(f64::total_cmp);
        let profile = self.profile;
        let hours = |m: u128| m as f64 / 3.6e9;
        let on_demand_micros = self.instance_micros - self.spot_micros + self.warm.initialising_micros;
        let prices = &profile.prices;
        let spot = profile.capacity.spot.as_ref();
        let pool_state = profile.capacity.warm_pool.as_ref().map(|p| p.state);
        let cost_usd = hours(on_demand_micros) * prices.per_hour(Purchase::OnDemand, spot)
            + hours(self.spot_micros) * prices.per_hour(Purchase::Spot, spot)
            + hours(self.warm.waiting_micros) * prices.volume_per_hour(pool_state);
        Row {
            scenario: format!("{}/{}", profile.name, scenario.name),
            profile: profile.name.to_string(),
            policy: kind.name().to_string(),
            capacity: profile.capacity.name.clone(),
            requests: scenario.arrivals.len(),
            completed: latencies.len(),
            lost: scenario.arrivals.len() - latencies.len(),
            p50_latency_s: percentile(&latencies, 0.50),
            p99_latency_s: percentile(&latencies, 0.99),
            completion_s: seconds(self.last_completion.saturating_sub(first_arrival)),
            instance_seconds: self.instance_micros as f64 / 1e6,
            on_demand_instance_seconds: on_demand_micros as f64 / 1e6,
            spot_instance_seconds: self.spot_micros as f64 / 1e6,
            warm_pool_seconds: self.warm.waiting_micros as f64 / 1e6,
            cost_usd,
            cost_per_1000_images_usd: if latencies.is_empty() {
                0.0
            } else {
                1000.0 * cost_usd / latencies.len() as f64
            },
            interruptions: self.interruptions,
            visibility_waits: self.visibility_waits,
            peak_instances: self.peak,
            scaling_actions: self.actions,
            max_waiting_at_cap: self.max_waiting_at_cap,
            back_at_min_s: back_at_min.map(|t| seconds(t.saturating_sub(self.last_completion))),
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The warm pool: instances ready to start, refills initialising, and the time they waited.
struct WarmPoolState {
    size: usize,
    reuse_on_scale_in: bool,
    ready: usize,
    refilling: usize,
    since: Micros,
    /// Instance-seconds waiting (volumes billed) and initialising (billed On-Demand).
    waiting_micros: u128,
    initialising_micros: u128,
}

impl WarmPoolState {
    /// Full at the start: the pool was prepared before the scenario.
    fn new(pool: Option<&super::capacity::WarmPool>) -> Self {
        let size = pool.map_or(0, |p| p.size);
        Self {
            size,
            reuse_on_scale_in: pool.is_some_and(|p| p.reuse_on_scale_in),
            ready: size,
            refilling: 0,
            since: 0,
            waiting_micros: 0,
            initialising_micros: 0,
        }
    }

    fn has_room(&self) -> bool {
        self.ready + self.refilling < self.size
    }

    /// Counts the waiting time up to `now`.
    fn settle(&mut self, now: Micros) {
        self.waiting_micros += self.ready as u128 * u128::from(now.saturating_sub(self.since));
        self.since = now;
    }

    fn take(&mut self, now: Micros) {
        self.settle(now);
        self.ready -= 1;
    }

    /// A refill finished initialising.
    fn refilled(&mut self, now: Micros) {
        self.settle(now);
        self.ready += 1;
        self.refilling = self.refilling.saturating_sub(1);
    }

    /// A scaled-in instance came back.
    fn returned(&mut self, now: Micros) {
        self.settle(now);
        self.ready += 1;
    }
}
