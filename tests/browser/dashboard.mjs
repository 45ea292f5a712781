// Opens the admin dashboard in Debian's Chromium (headless) and uses it as an operator would:
// usage: node dashboard.mjs <app base URL> <admin token> <screenshot path>
// Prints one JSON line of what it saw; exits non-zero on the first thing that is not right.
import { chromium } from "playwright-core";

const [base, token, screenshot] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

function check(ok, what) {
  if (!ok) throw new Error("dashboard: " + what);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const seen = {};
try {
  // The browser authenticates as an operator would when it asks: HTTP Basic, the token as password.
  const context = await browser.newContext({ httpCredentials: { username: "operator", password: token } });
  const page = await context.newPage();
  const alerts = [];
  page.on("dialog", async dialog => {
    if (dialog.type() === "confirm") {
      seen.confirm = dialog.message();
      await dialog.accept();
    } else {
      alerts.push(dialog.message());
      await dialog.dismiss();
    }
  });
  const errors = [];
  page.on("pageerror", err => errors.push(String(err)));

  // `/admin` redirects to the dashboard.
  await page.goto(base + "/admin", { waitUntil: "load" });
  check(page.url() === base + "/admin/dashboard", "landed on " + page.url());

  // The function rows, with their hit ratio.
  const row = page.locator('#functions tbody tr[data-function$="list_posts"]');
  await row.waitFor({ timeout: 10000 });
  seen.list_posts = await row.locator("td").allTextContents();
  check(seen.list_posts[3] === "50.0 %", "list_posts hit ratio " + seen.list_posts[3]);
  seen.functions = await page.locator("#functions tbody tr").count();

  // The chart: hits made now show as a rise of the hits line (above its zero at y=150)
  // within a sample or two (one every 2 s); the misses line is drawn beside it.
  for (let i = 0; i < 5; i++) {
    const hit = await page.request.get(base + "/posts");
    check(hit.headers()["x-cache"] === "HIT", "GET /posts " + i + " was " + hit.headers()["x-cache"]);
  }
  await page.waitForFunction(() => document.getElementById("hits-line").getAttribute("points")
                                     .split(" ").some(p => p.includes(",") && Number(p.split(",")[1]) < 150),
                             null, { timeout: 15000 });
  seen.hits_points = await page.locator("#hits-line").getAttribute("points");
  seen.misses_points = await page.locator("#misses-line").getAttribute("points");
  check(seen.misses_points.includes(","), "no misses line");

  // A key carrying markup is looked up and listed as text, never run or parsed as HTML.
  const evil = "<script>alert('xss')</script><img src=x onerror=alert(1)>";
  await page.fill('#lookup input[name="key"]', evil);
  await page.click('#lookup button[type="submit"]');
  const keyCell = page.locator("#entry dd").first();
  await keyCell.waitFor({ timeout: 10000 });
  seen.looked_up = await keyCell.textContent();
  check(seen.looked_up === evil, "the key shows as " + seen.looked_up);
  await page.fill('#list input[name="namespace"]', "");
  await page.click('#list button[type="submit"]');
  await page.locator("#keys li").first().waitFor({ timeout: 10000 });
  seen.keys = await page.locator("#keys li").allTextContents();
  // Listed as stored: in the one key grammar every byte a placeholder escapes is
  // percent-escaped (`<`, `>`, `'`, `(`, spaces), so the listed key is the one a lookup or a
  // purge takes; and shown as text.
  check(seen.keys.some(k => k.startsWith("%3Cscript%3Ealert%28%27xss%27%29%3C/script%3E%3Cimg%20src=x")),
        "the key list " + JSON.stringify(seen.keys));
  seen.injected = await page.evaluate(() => document.querySelectorAll("#entry script, #entry img, #keys script, #keys img").length);
  check(seen.injected === 0, "markup from a key became elements: " + seen.injected);

  // Purge the tag `posts`, confirming.
  await page.fill('#purge-tag input[name="tag"]', "posts");
  await page.click('#purge-tag button[type="submit"]');
  await page.waitForFunction(() => document.getElementById("purge-result").textContent === "purged tag posts",
                             null, { timeout: 10000 });
  check(seen.confirm === "Purge tag posts on every replica (and the CDN)?", "confirmation " + seen.confirm);

  // The next request for the list misses.
  const next = await page.request.get(base + "/posts");
  seen.next_x_cache = next.headers()["x-cache"];
  check(seen.next_x_cache === "MISS", "after the purge, GET /posts was " + seen.next_x_cache);

  check(alerts.length === 0, "a script ran: " + JSON.stringify(alerts));
  check(errors.length === 0, "page errors: " + JSON.stringify(errors));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ok: true, seen }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err), seen }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
