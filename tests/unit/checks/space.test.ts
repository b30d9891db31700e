// What the new data location's disk must hold before an upgrade starts writing (runner/checks/preflight.ts).
import { strict as assert } from "node:assert";
import { LIVE_MARGIN, newClusterNeeds } from "../../../runner/checks/preflight";

const GB = 1024 ** 3;

describe("disk budget for the new cluster", () => {
    it("a dump method counts the databases with their rebuilt indexes, the restore's WAL, the dump on the same disk and a margin for the live server", () => {
        assert.deepEqual(newClusterNeeds(10 * GB, { restoreWal: true }, true), [
            ["the new cluster", 12 * GB],
            ["the restore's WAL", 10 * GB],
            ["the dump on the same disk", 10 * GB],
            ["room left for the running server", LIVE_MARGIN],
        ]);
    });

    it("caps the restore's WAL at the restore's max_wal_size (16GB)", () => {
        const wal = newClusterNeeds(40 * GB, { restoreWal: true }, false).find(
            ([what]) => what === "the restore's WAL",
        );
        assert.deepEqual(wal, ["the restore's WAL", 16 * GB]);
    });

    it("counts an earlier new cluster that a re-run copies aside; pg_upgrade's copy has no restore WAL", () => {
        assert.deepEqual(newClusterNeeds(10 * GB, { setAsideBytes: 3 * GB }, false), [
            ["the new cluster", 12 * GB],
            ["the earlier new cluster set aside", 3 * GB],
            ["room left for the running server", LIVE_MARGIN],
        ]);
    });
});
