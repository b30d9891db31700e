// WAL positions for the standby's catch-up (method pg_upgrade): a standby that replayed everything must be seen
// as caught up at once, also when the old server's insert position lies past a page header.
import { strict as assert } from "node:assert";
import { formatLsn, lastRecordEnd, parseLsn } from "../../../runner/pg-upgrade/standby";

const SEGMENT = 16777216n;
const BLOCK = 8192n;

describe("WAL positions", () => {
    it("reads and prints positions as PostgreSQL does", () => {
        assert.equal(parseLsn("0/56000028"), 0x56000028n);
        assert.equal(parseLsn("1/A"), (1n << 32n) + 10n);
        assert.equal(formatLsn(parseLsn("3/DEADBEEF")), "3/DEADBEEF");
        assert.throws(() => parseLsn("not/an lsn"), /not a WAL position: "not\/an lsn"/);
    });

    it("takes a segment's first page header off the insert position (what a standby's replay position stops at)", () => {
        // Seen on a real idle 15 after pg_basebackup's segment switch: insert 0/56000028, replayed 0/56000000.
        assert.equal(formatLsn(lastRecordEnd(parseLsn("0/56000028"), SEGMENT, BLOCK)), "0/56000000");
    });

    it("takes a page header off an insert position at the start of any other page", () => {
        assert.equal(formatLsn(lastRecordEnd(parseLsn("0/15002018"), SEGMENT, BLOCK)), "0/15002000");
    });

    it("leaves a position inside a page as it is", () => {
        for (const lsn of ["0/1501518", "0/15017E0", "0/15002020", "0/56000030"]) {
            assert.equal(formatLsn(lastRecordEnd(parseLsn(lsn), SEGMENT, BLOCK)), lsn);
        }
    });
});
