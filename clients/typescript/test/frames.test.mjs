// The client's frame types are generated from schemas/ (the one description
// of the wire); this fails when a schema changed and they were not.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

test("src/frames.*.ts are generated from the current schemas", () => {
  const script = fileURLToPath(new URL("../scripts/gen-frames.mjs", import.meta.url));
  const r = spawnSync(process.execPath, [script, "--check"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
});
