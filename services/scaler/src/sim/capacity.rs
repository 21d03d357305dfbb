//! What the app tier's capacity is made of and what it costs: purchase options (On-Demand, Spot),
//! an Auto Scaling warm pool of pre-initialised instances, Spot interruptions, and prices.
//!
//! AWS does not let one group have both: a warm pool "cannot be added to an Auto Scaling group
//! that has a mixed instances policy or a launch template that requests Spot Instances"
//! (PutWarmPool). So capacity with both is two groups, as Terraform deploys it: the first
//! `on_demand_base` instances in an On-Demand group with the warm pool, the rest in a Spot group.

pub use imgrec_domain::ports::Purchase;
use serde::Serialize;

/// The state warm-pool instances wait in: both are billed for their volumes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WarmState {
    /// Starts like a stopped instance: the OS boots, the service starts and loads the model.
    Stopped,
    /// Resumes with its memory restored from the root volume: the service is already running.
    Hibernated,
}

impl WarmState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stopped => "Stopped",
            Self::Hibernated => "Hibernated",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WarmPool {
    /// Instances kept initialised (Terraform: min_size = max_group_prepared_capacity = this, so
    /// the group refills the pool as scale-out draws on it).
    pub size: usize,
    pub state: WarmState,
    /// Scaled-in instances go back to the pool (when it has room) instead of being terminated.
    pub reuse_on_scale_in: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Spot {
    /// Instances beyond this many On-Demand ones are Spot.
    pub on_demand_base: usize,
    /// Spot's price is On-Demand's times (1 - discount).
    pub discount: f64,
    /// Interruption notices per Spot instance-hour.
    pub interruptions_per_hour: f64,
    /// At the two-minute notice the worker stops receiving and finishes what it holds; without
    /// it the worker runs until reclaimed, and what it held waits out its visibility timeout.
    pub drain: bool,
}

/// One way to provision the app tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub name: String,
    /// Instances kept in service when idle (scaler.min).
    pub min: usize,
    pub warm_pool: Option<WarmPool>,
    pub spot: Option<Spot>,
}

impl Capacity {
    /// On-Demand instances launched cold: what ships before the warm pool and Spot.
    pub fn on_demand() -> Self {
        Self {
            name: "on-demand".into(),
            min: 0,
            warm_pool: None,
            spot: None,
        }
    }

    pub fn warm_pool(pool: WarmPool) -> Self {
        Self {
            name: format!("warm-pool({}x{})", pool.size, pool.state.name()),
            min: 0,
            warm_pool: Some(pool),
            spot: None,
        }
    }

    /// The warm pool's group holds the On-Demand base: `min` in service plus the pool's size.
    pub fn warm_pool_and_spot(min: usize, pool: WarmPool, spot: Spot) -> Self {
        let spot = Spot {
            on_demand_base: min + pool.size,
            ..spot
        };
        Self {
            name: format!("min {min}+warm-pool({}x{})+spot", pool.size, pool.state.name()),
            min,
            warm_pool: Some(pool),
            spot: Some(spot),
        }
    }
}

/// What an hour of each costs, in US dollars.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices {
    pub on_demand_per_hour: f64,
    /// gp3 storage per GiB-month.
    pub volume_per_gb_month: f64,
    pub root_volume_gb: f64,
    /// A hibernated instance's RAM is kept on its root volume.
    pub memory_gb: f64,
}

/// AWS bills a month as 730 hours.
const HOURS_PER_MONTH: f64 = 730.0;

impl Prices {
    /// Free: the local stack.
    pub fn none() -> Self {
        Self {
            on_demand_per_hour: 0.0,
            volume_per_gb_month: 0.0,
            root_volume_gb: 0.0,
            memory_gb: 0.0,
        }
    }

    /// c7i.large in us-east-1 (Linux On-Demand, 2 vCPU, 4 GiB) with the AMI's 16 GiB gp3 root
    /// volume: AWS's published prices.
    pub fn c7i_large() -> Self {
        Self {
            on_demand_per_hour: 0.08925,
            volume_per_gb_month: 0.08,
            root_volume_gb: 16.0,
            memory_gb: 4.0,
        }
    }

    /// An instance's volumes per hour, whether it runs or waits in the warm pool.
    pub fn volume_per_hour(&self, state: Option<WarmState>) -> f64 {
        let gb = self.root_volume_gb
            + if state == Some(WarmState::Hibernated) {
                self.memory_gb
            } else {
                0.0
            };
        gb * self.volume_per_gb_month / HOURS_PER_MONTH
    }

    pub fn per_hour(&self, purchase: Purchase, spot: Option<&Spot>) -> f64 {
        let discount = match (purchase, spot) {
            (Purchase::Spot, Some(s)) => s.discount,
            _ => 0.0,
        };
        self.on_demand_per_hour * (1.0 - discount) + self.volume_per_hour(None)
    }

    /// Expected cost per hour with `running` instances of which `on_demand` On-Demand, plus the
    /// warm pool waiting.
    pub fn hourly(&self, capacity: &Capacity, running: usize) -> f64 {
        let base = capacity
            .spot
            .as_ref()
            .map_or(running, |s| s.on_demand_base.min(running));
        let spot = running - base;
        let pool = capacity
            .warm_pool
            .as_ref()
            .map_or(0.0, |p| p.size as f64 * self.volume_per_hour(Some(p.state)));
        base as f64 * self.per_hour(Purchase::OnDemand, None)
            + spot as f64 * self.per_hour(Purchase::Spot, capacity.spot.as_ref())
            + pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spot_at_the_cap_costs_what_its_discount_says() {
        let prices = Prices::c7i_large();
        let spot = Spot {
            on_demand_base: 2,
            discount: 0.6,
            interruptions_per_hour: 0.0,
            drain: true,
        };
        let pool = WarmPool {
            size: 2,
            state: WarmState::Stopped,
            reuse_on_scale_in: true,
        };
        let on_demand = prices.hourly(&Capacity::on_demand(), 19);
        let mixed = prices.hourly(&Capacity::warm_pool_and_spot(0, pool, spot), 19);
        assert!((on_demand - 19.0 * (0.08925 + 16.0 * 0.08 / 730.0)).abs() < 1e-9);
        let ratio = mixed / on_demand;
        assert!((0.40..0.50).contains(&ratio), "{ratio}");
        // A hibernated instance keeps its RAM on its volume.
        assert!(prices.volume_per_hour(Some(WarmState::Hibernated)) > prices.volume_per_hour(Some(WarmState::Stopped)));
    }
}
