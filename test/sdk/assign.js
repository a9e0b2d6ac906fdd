// Evaluates a GrowthBook features payload with the GrowthBook JavaScript SDK.
//
// Reads one JSON document from stdin:
//   {"payload": <experiment.growthbook_payload()>, "features": ["key", ...],
//    "users": [{"id": "...", "attributes": {...}}, ...]}
// and writes one JSON document to stdout: for each user, for each feature,
// the key of the variation the SDK assigns (the variant name), or null when
// the user is not in the experiment:
//   {"assignments": [[variant or null, ...], ...], "sdk_version": "..."}
"use strict";
const { GrowthBook } = require("@growthbook/growthbook");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const doc = JSON.parse(input);
  const gb = new GrowthBook({ features: doc.payload.features });
  const assignments = doc.users.map((user) => {
    gb.setAttributes(Object.assign({}, user.attributes || {}, { id: user.id }));
    return doc.features.map((key) => {
      const res = gb.evalFeature(key);
      if (res.source !== "experiment" || !res.experimentResult || !res.experimentResult.inExperiment) {
        return null;
      }
      return res.experimentResult.key;
    });
  });
  const version = require("@growthbook/growthbook/package.json").version;
  process.stdout.write(JSON.stringify({ assignments, sdk_version: version }) + "\n");
});
