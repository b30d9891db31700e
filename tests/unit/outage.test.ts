// The outage a Matrix client saw, as the benchmark and the real-Synapse tests compute it from the sends.
import { strict as assert } from "node:assert";
import { outageOf, SendRecord } from "../fixtures/matrix-client";

const send = (start: number, end: number, ok: boolean): SendRecord => ({ body: `m ${start}`, start, end, ok });

describe("the outage a client saw", () => {
    it("runs from the start of the first failed send to the end of the first later send that succeeded", () => {
        const outage = outageOf([send(0, 50, true), send(250, 300, true), send(500, 5500, false), send(750, 900, false), send(1000, 9100, true), send(9250, 9300, true)]);
        assert.deepEqual(outage, { seconds: 8.6, from: 500, to: 9100, failedSends: 2 });
    });
    it("takes the send that succeeded first, not the one started first (sends overlap)", () => {
        const outage = outageOf([send(0, 40, false), send(250, 7000, true), send(500, 6000, true)]);
        assert.deepEqual(outage, { seconds: 6, from: 0, to: 6000, failedSends: 1 });
    });
    it("is undefined when every send succeeded, and an error when none succeeded after the first failure", () => {
        assert.equal(outageOf([send(0, 10, true), send(250, 260, true)]), undefined);
        assert.throws(() => outageOf([send(0, 10, true), send(250, 5250, false)]), /no send succeeded after the first failure at 250 ms \(2 sends\)/);
    });
});
