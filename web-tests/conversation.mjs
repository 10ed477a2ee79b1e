// A scripted conversation between two profiles, each in its own `quicnprotochat
// web`, in headless Chromium. Usage: node conversation.mjs URL_A URL_B SCREENSHOT
// (the URLs as `web` printed them, token included). Exits non-zero on the first
// step that does not happen. Near the end it prints `STOP_NODE` and waits for a
// line on stdin: the caller stops the node, then answers.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const [urlA, urlB, screenshot] = process.argv.slice(2);
if (!urlA || !urlB || !screenshot) {
  console.error("usage: node conversation.mjs URL_A URL_B SCREENSHOT");
  process.exit(2);
}
const STEP_MS = 30_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

let step = "start";
const pageErrors = [];
async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 650 } });
  // Notifications are recorded rather than shown (headless has no desktop).
  await context.addInitScript(() => {
    window.__notifications = [];
    window.Notification = class {
      constructor(title, options) {
        window.__notifications.push({ title, body: options && options.body });
      }
      static get permission() {
        return "granted";
      }
      static requestPermission() {
        return Promise.resolve("granted");
      }
    };
  });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("dialog", (d) => {
    pageErrors.push("a dialog opened: " + d.message());
    d.dismiss();
  });
  await page.goto(url);
  return page;
}

async function register(page, name) {
  step = `${name} registers`;
  await page.locator("#signin").waitFor();
  await page.fill("#username", name);
  await page.fill("#password", `${name}'s password`);
  await page.click("#register");
  await page.locator("#app").waitFor();
  await page.locator("#me", { hasText: name }).waitFor();
}

async function send(page, text) {
  await page.fill("#message-input", text);
  await page.click("#send");
  await page.locator("#messages li", { hasText: text }).waitFor();
}

try {
  const alice = await open(urlA);
  const bob = await open(urlB);
  await register(alice, "alice");
  await register(bob, "bob");

  step = "alice creates a group";
  await alice.fill("#new-group-name", "team");
  await alice.click("#create-group");
  await alice.locator("#group-title", { hasText: "team" }).waitFor();

  step = "alice invites bob";
  await alice.fill("#invite-name", "bob");
  await alice.click("#invite");
  await alice.locator("#members li", { hasText: "bob" }).waitFor();

  step = "bob sees the group appear, live";
  await bob.locator('#groups li[data-group="team"]').click();
  await bob.locator("#members li", { hasText: "alice" }).waitFor();

  step = "alice writes; bob reads it live";
  await send(alice, "hello bob, this is alice");
  await bob.locator("#messages li", { hasText: "hello bob, this is alice" }).waitFor();

  step = "bob answers; alice reads it live";
  await send(bob, "hi alice!");
  await alice.locator("#messages li", { hasText: "hi alice!" }).waitFor();

  step = "messages carry their time";
  const stamp = await bob.locator("#messages li time").first().getAttribute("datetime");
  if (!stamp || Number.isNaN(Date.parse(stamp))) throw new Error(`no time on a message: ${stamp}`);

  step = "markup in a message is shown as text";
  const markup = '<img src=x onerror="alert(1)">';
  await send(alice, markup);
  await bob.locator("#messages li", { hasText: markup }).waitFor();
  if ((await bob.locator("#messages img").count()) !== 0) throw new Error("markup was rendered");

  step = "an empty message is refused with a line";
  await bob.fill("#message-input", "   ");
  await bob.click("#send");
  await bob.locator("#error", { hasText: "empty" }).waitFor();

  step = "a reload keeps the session and the history";
  await bob.reload();
  await bob.locator('#groups li[data-group="team"]').click();
  await bob.locator("#messages li", { hasText: "hi alice!" }).waitFor();

  step = "the page without its token is refused";
  const stranger = await browser.newContext();
  const strangerPage = await stranger.newPage();
  await strangerPage.goto(new URL(urlA).origin + "/");
  await strangerPage.locator("#error", { hasText: "access token" }).waitFor({ timeout: STEP_MS });

  step = "a message in a group that is not open counts as unread and notifies";
  await alice.fill("#new-group-name", "side");
  await alice.click("#create-group");
  await alice.locator("#group-title", { hasText: "side" }).waitFor();
  await alice.fill("#invite-name", "bob");
  await alice.click("#invite");
  await alice.locator("#members li", { hasText: "bob" }).waitFor();
  await bob.locator('#groups li[data-group="side"]').waitFor();
  await send(alice, "psst, over here");
  await bob.locator('#groups li[data-group="side"] .unread', { hasText: "1" }).waitFor();
  const notes = await bob.evaluate(() => window.__notifications);
  if (!notes.some((n) => n.title === "alice in side" && n.body === "psst, over here")) {
    throw new Error("no notification for the message: " + JSON.stringify(notes));
  }

  step = "a reload keeps the unread count";
  await bob.reload();
  await bob.locator('#groups li[data-group="side"] .unread', { hasText: "1" }).waitFor();

  step = "opening the group clears its count";
  await bob.locator('#groups li[data-group="side"]').click();
  await bob.locator("#messages li", { hasText: "psst, over here" }).waitFor();
  if ((await bob.locator('#groups li[data-group="side"] .unread').count()) !== 0) {
    throw new Error("the count stayed after opening the group");
  }

  step = "screenshot";
  await alice.screenshot({ path: screenshot });

  step = "the node goes away: the page says so";
  console.log("STOP_NODE");
  await stdinLines.next();
  await bob.locator('#connection[data-state="reconnecting"]').waitFor();

  step = "a message written meanwhile is shown pending";
  await bob.fill("#message-input", "written while away");
  await bob.click("#send");
  await bob.locator("#messages li.pending", { hasText: "written while away" }).waitFor();
  await bob.locator("#messages li.pending .delivery", { hasText: "pending" }).waitFor();
  if (pageErrors.length) throw new Error("errors on the pages: " + pageErrors.join("; "));
  console.log("conversation ok");
  await browser.close();
  process.exit(0);
} catch (e) {
  console.error(`step "${step}" failed: ${e.message}`);
  await browser.close();
  process.exit(1);
}
