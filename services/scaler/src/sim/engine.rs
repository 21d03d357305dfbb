//! One discrete-event run: a queue with SQS-like batch receive, instances that boot, take batches,
//! drain when retired, and the real `Scaler` ticking on the simulated clock, observing the
//! simulated queue and fleet (`adapters`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use imgrec_domain::policy::PolicyKind;
use imgrec_domain::ports::{FleetChange, Instance, InstanceState, QueueDepth};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal, Normal};

use super::adapters::World;
use super::{Profile, Row, Scenario, Series};
use crate::Scaler;

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
    jitter: LogNormal<f64>,
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

    fn stop(&mut self, id: usize, now: Micros) {
        let instance = &mut self.instances[id];
        instance.phase = Phase::Gone;
        self.instance_micros += u128::from(now - instance.launched);
        self.live.retain(|&i| i != id);
        self.idle.retain(|&i| i != id);
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
                state: match (i.stopping, i.phase) {
                    (true, _) => InstanceState::Stopping,
                    (false, Phase::Booting) => InstanceState::Pending,
                    _ => InstanceState::Running,
                },
                launched_at: clock(i.launched),
                busy: i.phase == Phase::Busy,
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
        let boot = &profile.boot;
        Sim {
            profile,
            rng: StdRng::seed_from_u64(seed),
            boot: Normal::new(boot.mean_s, boot.sd_s).expect("a valid boot time distribution"),
            jitter: LogNormal::new(0.0, 0.1).expect("a valid service time jitter"),
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
            peak: 0,
            actions: 0,
            max_waiting_at_cap: 0,
        }
    }

    /// Boots what the fleet launched and stops what it retired (a busy one after its batch).
    fn apply(&mut self, change: FleetChange, now: Micros) {
        for name in change.launch {
            let id = self.instances.len();
            let boot_s = self.boot.sample(&mut self.rng).max(self.profile.boot.min_s);
            self.instances.push(SimInstance {
                name,
                launched: now,
                phase: Phase::Booting,
                stopping: false,
                batch: Vec::new(),
            });
            self.live.push(id);
            self.schedule(now + micros(boot_s), Event::Ready(id));
            self.actions += 1;
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
        Row {
            scenario: format!("{}/{}", self.profile.name, scenario.name),
            profile: self.profile.name.to_string(),
            policy: kind.name().to_string(),
            requests: scenario.arrivals.len(),
            completed: latencies.len(),
            p50_latency_s: percentile(&latencies, 0.50),
            p99_latency_s: percentile(&latencies, 0.99),
            completion_s: seconds(self.last_completion.saturating_sub(first_arrival)),
            instance_seconds: self.instance_micros as f64 / 1e6,
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
