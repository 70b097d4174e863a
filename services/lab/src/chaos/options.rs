//! What a chaos run is asked for, and what every part of it shares: the journal it prints and
//! the SKU whose stock decides how many orders can be confirmed.

use std::time::Instant;

use service_kit::Style;

/// What half the load buys, one unit per order: its stock decides how many of those orders
/// can be confirmed. Nothing else in the run holds it, so every unit is sold or still there.
pub(super) const CONFIRMING_SKU: &str = "STICKER-001";

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOptions {
    /// How the services coordinate: `choreography` (events) or `orchestration` (the saga).
    #[arg(long, default_value_t = Style::Choreography)]
    pub style: Style,
    /// Orders to place.
    #[arg(long, default_value_t = 300)]
    pub orders: usize,
    /// Orders placed per second.
    #[arg(long, default_value_t = 15.0)]
    pub rate: f64,
    /// Services stopped and restarted during the run (alternately SIGKILL and SIGTERM).
    #[arg(long, default_value_t = 8)]
    pub kills: usize,
    /// Skip `rabbitmqctl stop_app` / `start_app` (it needs the rights to run rabbitmqctl).
    #[arg(long)]
    pub no_broker_restart: bool,
    /// Skip restarting Postgres (it needs the rights to run pg_ctlcluster).
    #[arg(long)]
    pub no_database_restart: bool,
    /// Units of STICKER-001 (which half the orders buy) to seed before the load; the
    /// catalog's seed (1000) if not given. A run may want more than there are: the orders past
    /// the stock must then be cancelled for it, and exactly the stock sold.
    #[arg(long)]
    pub stock: Option<u32>,
    /// Events re-published as duplicate deliveries.
    #[arg(long, default_value_t = 200)]
    pub duplicates: usize,
    /// How long the shop may take to settle after the faults stop.
    #[arg(long, default_value_t = 180)]
    pub settle_seconds: u64,
    /// Processes per service: replicas compete for their service's queue, race on its outbox,
    /// and are stopped one at a time while the others go on.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
    pub replicas: u16,
    /// The services' ORDER_DEADLINE_MS: shorter than in production (10 minutes), so an order
    /// stuck by the faults is expired and undone within the run.
    #[arg(long, default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(1_000..))]
    pub deadline_ms: u64,
    /// RabbitMQ nodes: 1 (this machine's broker, restarted once), or 3 (a cluster started on
    /// this machine for the run, on ports 5681–5683: the node leading the queues is lost, later
    /// the node most services are connected to, each brought back).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=3))]
    pub broker_nodes: u16,
    /// Put a proxy in front of every service's broker and database connections and, one
    /// service at a time under the load, make one silent, slow or reset, then heal it (see
    /// docs/operations.md). Not with `--broker-nodes 3`.
    #[arg(long)]
    pub network_faults: bool,
    /// How long a silent or slow network fault lasts.
    #[arg(long, default_value_t = 10)]
    pub fault_seconds: u64,
    /// Skip the late joiner (after the audit, the console drops its schema and catches up from
    /// the shop's history while the broker is restarted, or a cluster node lost).
    #[arg(long)]
    pub no_late_joiner: bool,
    /// Keep the database, queues and logs afterwards for inspection.
    #[arg(long)]
    pub keep: bool,
}

/// Prints what happens, stamped with the time since the run started.
#[derive(Clone, Copy)]
pub(super) struct Journal(pub(super) Instant);

impl Journal {
    pub(super) fn note(self, line: impl AsRef<str>) {
        println!(
            "t+{:6.1}s  {}",
            self.0.elapsed().as_secs_f64(),
            line.as_ref()
        );
    }
}
