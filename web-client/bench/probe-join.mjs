// Resource timing of a deep link's requests (which connection, queueing), one page.
import { launchBrowser, openPage, callUrl, closePage, uniqueRoom } from '../tests/helpers.mjs';
const base = process.argv[2];
const browser = await launchBrowser();
const room = uniqueRoom('probe');
const a = await openPage(browser, callUrl(base, { room, name: 'A' }));
await new Promise((r) => setTimeout(r, 3000));
const b = await openPage(browser, callUrl(base, { room, name: 'B' }));
await new Promise((r) => setTimeout(r, 4000));
const rows = await b.evaluate(() => performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation')).map((e) => ({
  name: e.name.replace(location.origin, '').slice(0, 40), start: Math.round(e.startTime), connS: Math.round(e.connectStart), connE: Math.round(e.connectEnd), req: Math.round(e.requestStart), resp: Math.round(e.responseStart), end: Math.round(e.responseEnd),
})));
rows.sort((x, y) => x.start - y.start);
for (const r of rows) console.log(JSON.stringify(r));
await closePage(a); await closePage(b); await browser.close();
