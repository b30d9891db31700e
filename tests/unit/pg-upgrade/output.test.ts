// How the upgrade step reads pg_upgrade's output, on real output captured on this machine (15 -> 17, --link):
// a clean run, and a run whose workers failed while pg_upgrade went on to "Upgrade Complete" and exit 0
// (--jobs 2 without docker run --init; see runner/pg-upgrade/upgrade.ts).
import { strict as assert } from "node:assert";
import { promises as fs } from "node:fs";
import { pgUpgradeFailure } from "../../../runner/pg-upgrade/output";
import * as path from "node:path";

const fixture = async (name: string) =>
    (await fs.readFile(path.join(__dirname, "../../fixtures", name), "utf8")).split("\n");

describe("pgUpgradeFailure", () => {
    it("finds nothing wrong in a clean run that exited 0", async () => {
        const lines = await fixture("pg-upgrade-link-success.txt");
        assert.ok(lines.includes("Upgrade Complete"));
        assert.equal(pgUpgradeFailure(lines, false), undefined);
    });

    it("fails a run that printed a worker's failure, though it said Upgrade Complete and exited 0, and says why", async () => {
        const lines = await fixture("pg-upgrade-worker-failure.txt");
        assert.ok(lines.includes("Upgrade Complete"));
        assert.equal(
            pgUpgradeFailure(lines, false),
            'old database "postgres" not found in the new cluster Failure, exiting',
        );
    });

    it("reports pg_upgrade's own fatal check from its line on", () => {
        const lines = [
            "Checking cluster versions                                     ok",
            "Checking for reg* data types in user tables                   fatal",
            "",
            "Your installation contains one of the reg* data types in user tables.",
            "These data types reference system OIDs that are not preserved by",
            "pg_upgrade, so this cluster cannot currently be upgraded.",
            "Failure, exiting",
        ];
        assert.equal(
            pgUpgradeFailure(lines, true),
            "Checking for reg* data types in user tables fatal Your installation contains one of the reg* data types in user tables. These data types reference system OIDs that are not preserved by pg_upgrade, so this cluster cannot currently be upgraded. Failure, exiting",
        );
    });

    it("fails a non-zero exit even without a line it knows, with the last lines said", () => {
        assert.equal(
            pgUpgradeFailure(
                [
                    "Performing Consistency Checks",
                    "-----------------------------",
                    "Checking cluster versions",
                    "could not connect",
                ],
                true,
            ),
            "Performing Consistency Checks Checking cluster versions could not connect",
        );
    });
});
