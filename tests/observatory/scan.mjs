// Grade a local site with the MDN HTTP Observatory's own tests and scoring
// (the npm package behind developer.mozilla.org/observatory), on any ports.
// Usage: NODE_EXTRA_CA_CERTS=ca.crt node scan.mjs HOST HTTP_PORT HTTPS_PORT [PATH]
// Prints {"status", "score", "grade", "tests": {name: {result, pass, modifier}}}.
//
// The package's scan() takes no ports, so this repeats its scoring loop
// (src/scanner/index.js) around its own retriever, tests and grader.
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

// The HSTS preload list is downloaded by the package's postinstall, which
// cannot run offline (npm ci --ignore-scripts). Local test hosts are never
// preloaded, so an empty list grades them exactly the same.
const root = path.dirname(createRequire(import.meta.url).resolve(
  "@mdn/mdn-http-observatory/package.json"));
const preload = path.join(root, "conf", "hsts-preload.json");
if (!fs.existsSync(preload)) fs.writeFileSync(preload, "{}");

const pkg = (file) => import(path.join(root, "src", file));
const { retrieve } = await pkg("retriever/retriever.js");
const { ALL_TESTS } = await pkg("constants.js");
const { MINIMUM_SCORE_FOR_EXTRA_CREDIT } = await pkg("grader/charts.js");
const { getGradeForScore, getScoreModifier } = await pkg("grader/grader.js");

const [host, httpPort, httpsPort, urlPath] = process.argv.slice(2);
const r = await retrieve(host, { httpPort, httpsPort, path: urlPath });
if (!r.responses.auto) { console.log(JSON.stringify({ error: "site down" })); process.exit(1); }
let withCredit = 100, uncurved = 100;
const tests = {};
for (const test of ALL_TESTS) {
  const result = test(r);
  const modifier = result.result ? getScoreModifier(result.result) : 0;
  withCredit += modifier;
  if (modifier < 0) uncurved += modifier;
  tests[result.constructor.name] = { result: result.result, pass: result.pass, modifier };
}
const score = uncurved >= MINIMUM_SCORE_FOR_EXTRA_CREDIT ? withCredit : uncurved;
console.log(JSON.stringify({ status: r.responses.auto.status, ...getGradeForScore(score), tests }, null, 1));
