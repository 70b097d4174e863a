//! What a benchmark run is asked for, and the constants every step of it shares.

use std::time::Duration;

use service_kit::Style;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// How the services coordinate: `choreography` (events) or `orchestration` (the saga).
    #[arg(long, default_value_t = Style::Choreography)]
    pub style: Style,
    /// Orders offered per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Find the highest rate the shop settles without falling behind (within 8 minutes).
    #[arg(long, conflicts_with = "soak")]
    pub saturate: bool,
    /// A long steady run at --rate: table sizes, memory and p99 each minute.
    #[arg(long)]
    pub soak: bool,
    /// Measure the shop's history: rounds of --rate for --duration with the history unbound
    /// and bound (alternating), its bytes per order, and how fast the console and sales catch
    /// up from its start.
    #[arg(long, conflicts_with_all = ["saturate", "soak", "url"])]
    pub history: bool,
    /// Orders in the soak.
    #[arg(long, default_value_t = 50_000)]
    pub soak_orders: u64,
    /// The Orders API of a running shop to load instead of starting one (its events are read
    /// from AMQP_URL and SHOP_NAMESPACE; its processes found by name).
    #[arg(long)]
    pub url: Option<String>,
    /// Skip measuring the machine's ceilings.
    #[arg(long)]
    pub no_ceilings: bool,
    /// Print one JSON object on the last line of stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Processes per service of the shop it starts (orders are spread over the orders
    /// replicas; CPU and memory are reported per service, replicas summed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4), conflicts_with = "url")]
    pub replicas: u16,
}

/// The services the benchmark runs: the shop, without the console (an observer that handles
/// every event again; run it beside the shop to see what it costs).
pub(super) fn measured(name: &str) -> bool {
    name != <shared_events::participants::Console as shared_events::Participant>::NAME
}

/// Transactions (Postgres) and deliveries (RabbitMQ) in flight at once in the ceilings: what
/// one service runs at most with the default settings (`DB_POOL_SIZE`).
pub(super) const CONCURRENCY: usize = 10;

/// How long each ceiling is measured.
pub(super) const CEILING_TIME: Duration = Duration::from_secs(4);

/// After the load stops, how long the shop may take to settle what is in flight.
pub(super) const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Units seeded of every SKU the load buys, so stock never runs out by accident.
pub(super) const PLENTY: i32 = 1_000_000_000;
