// Drives the console in headless Chromium as a marketer would, against a running
// `cairn up` (started by cli/tests/console.rs, which passes the settings below):
// sign in, build a segment with two groups, see its FilterQL and size, save it, find
// the profile and see it listed as a member with the explanation; then sign in with a
// read-only token and fail to save. Screenshots of the main pages go to SCREENSHOTS.
//
// Environment: CONSOLE_URL (http://host:port/console/), ADMIN_TOKEN, READ_TOKEN,
// EMAIL (the profile to find), PLAYWRIGHT_CORE (the playwright-core package folder),
// CHROMIUM (the browser), SCREENSHOTS (a folder).

import { pathToFileURL } from "node:url";
import path from "node:path";
import assert from "node:assert/strict";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const { chromium } = await import(pathToFileURL(path.join(env("PLAYWRIGHT_CORE"), "index.mjs")).href);
const url = env("CONSOLE_URL");
const shots = env("SCREENSHOTS");
const email = env("EMAIL");

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: ["--no-sandbox", "--disable-gpu"],
});
const step = (text) => console.log(`step: ${text}`);

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  page.setDefaultTimeout(30_000);

  step("sign in as admin");
  await page.goto(url);
  await page.getByLabel("Admin token").fill("not-a-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "unknown token" }).waitFor();
  await page.getByLabel("Admin token").fill(env("ADMIN_TOKEN"));
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#whoami").filter({ hasText: "admin" }).waitFor();

  step("build a segment with two groups");
  await page.goto(url + "#/builder");
  await page.getByRole("heading", { name: "New segment" }).waitFor();
  const root = page.locator("#builder > .group");
  // The new segment starts with one condition; take it away.
  await root.getByRole("button", { name: "Remove this condition" }).click();
  // First group (ANY of): a behaviour or a trait.
  await root.locator(":scope > .group-head").getByRole("button", { name: "+ Group" }).click();
  const first = root.locator(":scope > .group").nth(0);
  await first.locator(":scope > .group-head").getByRole("button", { name: "+ Behaviour" }).click();
  const behaviour = first.locator(".condition").nth(0);
  await behaviour.getByLabel("Event name").fill("console_demo_viewed");
  await behaviour.getByLabel("Window").selectOption("all");
  await behaviour.getByLabel("Comparison").selectOption("ge");
  await behaviour.getByLabel("Count").fill("2");
  await first.locator(":scope > .group-head").getByRole("button", { name: "+ Attribute" }).click();
  const ticket = first.locator(".condition").nth(1);
  await ticket.getByLabel("Field").fill("ticket");
  await ticket.getByLabel("Operator").selectOption("eq");
  await ticket.getByLabel("Value").fill("T-1");
  // Second group (ALL of): has an email and visited.
  await root.locator(":scope > .group-head").getByRole("button", { name: "+ Group" }).click();
  const second = root.locator(":scope > .group").nth(1);
  await second.locator(":scope > .group-head").getByLabel("Combine conditions with").selectOption("and");
  await second.locator(":scope > .group-head").getByRole("button", { name: "+ Attribute" }).click();
  const hasEmail = second.locator(".condition").nth(0);
  await hasEmail.getByLabel("Field").fill("email");
  await hasEmail.getByLabel("Operator").selectOption("exists");
  await second.locator(":scope > .group-head").getByRole("button", { name: "+ Attribute" }).click();
  const visits = second.locator(".condition").nth(1);
  await visits.getByLabel("Field").fill("visit_count");
  await visits.getByLabel("Operator").selectOption("ge");
  await visits.getByLabel("Value").fill("1");

  const expected = [
    "FILTER AND (",
    "    OR (",
    "        event_count.console_demo_viewed.all >= 2,",
    '        ticket == "T-1"',
    "    ),",
    "    AND (",
    "        EXISTS email,",
    "        visit_count >= 1",
    "    )",
    ")",
  ].join("\n");
  await page.waitForFunction((text) => document.getElementById("filterql").value === text, expected);
  await page.locator("#check-status").filter({ hasText: "checks out" }).waitFor();
  await page.locator("#estimated-size").filter({ hasText: /^1$/ }).waitFor();
  assert.equal(await page.locator("#sample li").count(), 1);
  await page.getByLabel("Name", { exact: true }).fill("console_test");
  await page.screenshot({ path: path.join(shots, "console-builder.png"), fullPage: true });

  step("the text edits the builder too, and errors say where");
  const text = page.locator("#filterql");
  await text.fill("FILTER AND (visit_count >");
  await page.locator("#check-status").filter({ hasText: "line 1, column" }).waitFor();
  await text.fill(expected);
  await page.locator("#check-status").filter({ hasText: "checks out" }).waitFor();
  assert.equal(await root.locator(":scope > .group").count(), 2, "two groups rebuilt from the text");
  await text.fill(expected.replace("visit_count >= 1", "visit_count >= \"many\""));
  await page.locator("#problems li").first().waitFor();

  step("lists and quoted text survive builder edits");
  await text.fill('FILTER AND (city IN ("Washington, DC", "Boston"), plan == "5")');
  await page.locator("#check-status").filter({ hasText: "checks out" }).waitFor();
  const list = root.locator(".condition").nth(0).getByLabel("Value");
  assert.equal(await list.inputValue(), '"Washington, DC", Boston');
  await list.fill('"Washington, DC", Boston, Paris');
  const listed = 'FILTER AND (\n    city IN ("Washington, DC", "Boston", "Paris"),\n    plan == "5"\n)';
  await page.waitForFunction((want) => document.getElementById("filterql").value === want, listed);
  // Keyboard focus stays on the control that changed the builder, though the builder
  // is drawn anew.
  const combine = root.locator(":scope > .group-head").getByLabel("Combine conditions with");
  await combine.focus();
  await combine.selectOption("or");
  await page.waitForFunction(() => document.getElementById("filterql").value.startsWith("FILTER OR"));
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute("aria-label")), "Combine conditions with");
  await combine.selectOption("and");
  await page.waitForFunction((want) => document.getElementById("filterql").value === want, listed);
  await text.fill(expected);
  await page.locator("#check-status").filter({ hasText: "checks out" }).waitFor();

  step("save it");
  await page.getByRole("button", { name: "Save segment" }).click();
  await page.locator("#save-status").filter({ hasText: "Saved console_test" }).waitFor();

  step("the segments list shows it with its size");
  for (let attempt = 0; ; attempt++) {
    await page.goto(url + "#/segments");
    await page.reload();
    const row = page.getByRole("row").filter({ hasText: "console_test" });
    await row.waitFor();
    if ((await row.locator("td").nth(1).textContent()) === "1") break;
    assert.ok(attempt < 30, "console_test never reached size 1");
    await page.waitForTimeout(1000);
  }
  await page.screenshot({ path: path.join(shots, "console-segments.png"), fullPage: true });

  step("find the profile: a member, with the explanation");
  await page.goto(url + "#/profiles");
  await page.locator("#lookup-kind").selectOption("email");
  await page.locator("#lookup-value").fill(email);
  await page.getByRole("button", { name: "Find" }).click();
  // Memberships reach the profile a moment after the segment's own list.
  for (let attempt = 0; ; attempt++) {
    await page.locator("#profile-segments").waitFor();
    if ((await page.locator("#profile-segments").textContent()).includes("console_test")) break;
    assert.ok(attempt < 30, "the profile never listed console_test");
    await page.waitForTimeout(1000);
    await page.reload();
  }
  await page.locator("#explain-segment").selectOption("console_test");
  await page.getByRole("button", { name: "Explain" }).click();
  await page.locator("#explanation .badge.in").filter({ hasText: "in console_test" }).waitFor();
  const explained = await page.locator("#explanation").textContent();
  assert.match(explained, /ticket == "T-1"/);
  assert.match(explained, /EXISTS email/);
  await page.screenshot({ path: path.join(shots, "console-profile.png"), fullPage: true });

  step("campaigns and the live view");
  await page.goto(url + "#/campaigns");
  await page.locator("[data-campaign] svg").first().waitFor();
  await page.screenshot({ path: path.join(shots, "console-campaigns.png"), fullPage: true });
  await page.goto(url + "#/live");
  await page.getByRole("heading", { name: "Consumer lag" }).waitFor();
  await page.locator("#events-per-second").filter({ hasText: /^[0-9]/ }).waitFor();
  await page.screenshot({ path: path.join(shots, "console-live.png"), fullPage: true });

  step("a read-only user cannot save");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Admin token").fill(env("READ_TOKEN"));
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#whoami").filter({ hasText: "read" }).waitFor();
  await page.goto(url + "#/builder/console_test");
  await page.locator("#check-status").filter({ hasText: "checks out" }).waitFor();
  assert.equal(await page.getByRole("button", { name: "Save segment" }).isDisabled(), true);
  await page.locator("#read-only").waitFor();
  // And the server says no even when asked directly.
  const status = await page.evaluate(async () => (await fetch("/console/api/segments/console_test", {
    method: "PUT",
    headers: { "content-type": "application/json", "x-cairn-console": "1" },
    body: JSON.stringify({ filter: "FILTER EXISTS email" }),
  })).status);
  assert.equal(status, 403);

  assert.deepEqual(errors, [], "no script errors on any page");
  console.log("console browser test passed");
} finally {
  await browser.close();
}
