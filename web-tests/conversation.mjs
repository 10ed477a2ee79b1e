// A scripted conversation between two profiles, each in its own `quicnprotochat
// web`, in headless Chromium. Usage: node conversation.mjs URL_A URL_B SCREENSHOT
// (the URLs as `web` printed them, token included). Exits non-zero on the first
// step that does not happen.
import { chromium } from "playwright-core";

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

  step = "screenshot";
  await alice.screenshot({ path: screenshot });
  if (pageErrors.length) throw new Error("errors on the pages: " + pageErrors.join("; "));
  console.log("conversation ok");
  await browser.close();
} catch (e) {
  console.error(`step "${step}" failed: ${e.message}`);
  await browser.close();
  process.exit(1);
}
