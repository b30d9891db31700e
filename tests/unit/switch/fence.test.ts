// The write horizon's comparison (runner/switch/fence.ts): what cutover says when the old cluster moved after the copy.
import { strict as assert } from "node:assert";
import { horizonChanges, WriteHorizon } from "../../../runner/switch/fence";

const at = (rows: number, tables = "t1", sequences = "s1") => ({ rows, tables, sequences });

describe("the write horizon", () => {
    const before: WriteHorizon = { synapse: at(100), postgres: at(0, "t0", "s0") };

    it("finds nothing when nothing moved", () => {
        assert.deepEqual(horizonChanges(before, { synapse: at(100), postgres: at(0, "t0", "s0") }), []);
    });

    it("counts rows written, and names tables rewritten and sequences advanced", () => {
        assert.deepEqual(horizonChanges(before, { synapse: at(111, "t2", "s2"), postgres: at(0, "t9", "s0") }), [
            "11 row(s) inserted, updated or deleted in database synapse",
            "sequences advanced in database synapse",
            "tables created, dropped, truncated or rewritten in database postgres",
        ]);
    });

    it("never reads counters that went back (a crash or a statistics reset) as no writes", () => {
        assert.deepEqual(horizonChanges(before, { synapse: at(40), postgres: at(0, "t0", "s0") }), [
            "database synapse's write statistics were reset (a crash or pg_stat_reset), so its writes cannot be counted",
        ]);
    });

    it("names databases created or dropped since", () => {
        assert.deepEqual(horizonChanges(before, { synapse: at(100), other: at(0) }), [
            "database postgres is gone",
            "database other was created",
        ]);
    });
});
