//! The chaos run's own verdict, run as a user runs it (the `shop` binary, its services as
//! processes): a load that wants more of the confirming SKU than is in stock must pass, with
//! exactly the stock sold and every order past it cancelled for want of stock, while two
//! replicas of every service start at once (migrations racing), compete for each queue (two
//! inventories reserving the same stock), and are stopped one at a time.
//!
//! Faults that touch the shared broker and database (their restarts) are left out: other tests
//! run beside this one.

mod support;

#[test]
fn two_replicas_each_wanting_more_than_the_stock_sell_exactly_the_stock() {
    let output = support::run_shop(&[
        "chaos",
        "--orders",
        "24",
        "--rate",
        "24",
        "--kills",
        "2",
        "--stock",
        "5",
        "--duplicates",
        "20",
        "--no-broker-restart",
        "--no-database-restart",
        "--replicas",
        "2",
        "--settle-seconds",
        "90",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the chaos run failed\n{stdout}\n{stderr}"
    );
    // 12 of the 24 orders want one STICKER-001 each; 5 are in stock.
    assert!(
        stdout.contains(
            "STICKER-001 stock:        5 seeded, 12 orders wanted one: 5 sold, 7 refused for \
             stock, 0 left"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("of 2 replica(s) each"), "{stdout}");
    assert!(stdout.contains("orders lost:              0"), "{stdout}");
    assert!(stdout.contains("orders with wrong outcome: 0"), "{stdout}");
}
