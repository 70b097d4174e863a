// Drives the console's page in headless Chromium (Debian's package) with playwright-core:
// presses "happy" and sees the order's row reach "confirmed" without a reload, presses
// "unshippable" and sees the refund and the stock release, uses a button from the keyboard,
// opens a timeline, follows the out-of-stock story on the flow map, and saves a screenshot.
//
// Usage: node browser.mjs <console url> <screenshot.png> <dir holding node_modules/playwright-core>

import { createRequire } from "node:module";
import path from "node:path";

const [url, screenshot, modules] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modules), "node_modules", "noop.js"));
const { chromium } = require("playwright-core");

const PATIENCE = 30_000;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // Root in a container or CI runner: Chromium's sandbox needs user namespaces it lacks there.
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(PATIENCE);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
  await page.goto(url);
  await page.locator("#connection", { hasText: "live" }).waitFor();
  // A marker a reload would wipe: every check below happens on this one page load.
  await page.evaluate(() => { window.stillTheSamePage = true; });

  const status = page.locator("#status");
  async function place(buttonName, kind) {
    await page.getByRole("button", { name: buttonName }).click();
    await status.filter({ hasText: `Placed ${kind} order` }).waitFor();
    return status.getAttribute("data-order-id");
  }
  const row = (orderId) => page.locator(`#orders tr[data-order-id="${orderId}"]`);

  const happy = await place("Place a happy order", "happy");
  await row(happy).locator('td[data-step="outcome"]', { hasText: "confirmed" }).waitFor();
  // Every step filled in, none missed between the page's first read and its live stream.
  for (const [step, text] of [["placed", "placed"], ["payment", "paid"], ["stock", "reserved"], ["shipping", "booked"]]) {
    await row(happy).locator(`td[data-step="${step}"]`, { hasText: text }).waitFor();
  }
  console.log(`happy order ${happy}: every step, then confirmed, on the page`);

  const unshippable = await place("Unshippable country", "unshippable");
  const undone = row(unshippable).locator('td[data-step="undone"]');
  await undone.filter({ hasText: "refunded" }).waitFor();
  await undone.filter({ hasText: "stock released" }).waitFor();
  await row(unshippable).locator('td[data-step="outcome"]', { hasText: "cancelled" }).waitFor();
  console.log(`unshippable order ${unshippable}: refund and stock release on the page`);

  // Without a mouse: focus the button, press Enter.
  await page.getByRole("button", { name: "Card declined" }).focus();
  await page.keyboard.press("Enter");
  await status.filter({ hasText: "Placed declined order" }).waitFor();
  const declined = await status.getAttribute("data-order-id");
  await row(declined).locator('td[data-step="payment"]', { hasText: "declined" }).waitFor();
  console.log(`declined order ${declined}: placed from the keyboard, declined on the page`);

  // The full order id is in the page (the timeline link), and the timeline opens in place.
  await page.locator(`#orders a[data-order-id="${unshippable}"]`).click();
  await page.locator("#timeline-order", { hasText: unshippable }).waitFor();
  await page.locator('#timeline tr[data-event="ShipmentFailed"]').waitFor();
  await page.locator('#timeline tr[data-event="OrderCancelled"]').waitFor();
  // The flow map lit up and counted the messages that passed.
  await page.locator('#graph .node[data-message="OrderPlaced"][data-seen]').waitFor();
  // "What happens when stock runs out?": following that scenario highlights its story.
  await page.getByRole("button", { name: "stock runs out" }).click();
  await page.locator('#graph.following .node.follow[data-message="StockReservationFailed"]').waitFor();
  await page.locator('#graph.following .node.follow[data-message="PaymentRefunded"]').waitFor();
  if (await page.locator('#graph .node.follow[data-message="ShipmentBooked"]').count()) {
    throw new Error("the out-of-stock story highlights a booking");
  }
  console.log("flow map: messages counted as they pass; the out-of-stock story highlighted");

  if (!(await page.evaluate(() => window.stillTheSamePage === true))) {
    throw new Error("the page was reloaded");
  }
  if (errors.length) throw new Error(`errors on the page: ${errors.join("; ")}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
} finally {
  await browser.close();
}
