//! Arrival patterns. Each starts at a seeded offset within the first minute, so that no policy's
//! evaluation period happens to line up with it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// Arrival times in seconds, sorted.
    pub arrivals: Vec<f64>,
}

/// Poisson arrivals at `rate(t)` per second over `[0, duration)`, by thinning against `peak`.
fn poisson(rng: &mut StdRng, start: f64, duration: f64, peak: f64, rate: impl Fn(f64) -> f64) -> Vec<f64> {
    let gap = Exp::new(peak).expect("a positive peak rate");
    let mut t = 0.0;
    let mut out = Vec::new();
    loop {
        t += gap.sample(rng);
        if t >= duration {
            return out;
        }
        if rng.random::<f64>() * peak < rate(t) {
            out.push(start + t);
        }
    }
}

pub fn scenarios(seed: u64) -> Vec<Scenario> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5ca1e);
    let mut start = || rng.random_range(5.0..60.0);
    let (s1, s2, s3, s4, s5, s6) = (start(), start(), start(), start(), start(), start());
    let mut rng = StdRng::seed_from_u64(seed);
    let sparse_gap = Exp::new(1.0 / 180.0).expect("a positive rate");
    let mut t = s6;
    let sparse = (0..20)
        .map(|_| {
            let at = t;
            t += sparse_gap.sample(&mut rng);
            at
        })
        .collect();
    vec![
        Scenario {
            name: "burst-100",
            arrivals: vec![s1; 100],
        },
        Scenario {
            name: "burst-1000",
            arrivals: vec![s2; 1000],
        },
        Scenario {
            name: "poisson",
            arrivals: poisson(&mut rng, s3, 300.0, 200.0, |_| 200.0),
        },
        Scenario {
            name: "step",
            arrivals: poisson(&mut rng, s4, 360.0, 500.0, |t| {
                if (120.0..240.0).contains(&t) {
                    500.0
                } else {
                    50.0
                }
            }),
        },
        Scenario {
            name: "day",
            arrivals: poisson(&mut rng, s5, 600.0, 400.0, |t| {
                let phase = (std::f64::consts::PI * t / 600.0).sin();
                20.0 + 380.0 * phase * phase
            }),
        },
        Scenario {
            name: "sparse",
            arrivals: sparse,
        },
    ]
}
