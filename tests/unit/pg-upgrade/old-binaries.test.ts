// The ELF reader that finds the old postgres's dynamic loader (method pg_upgrade), on real programs of this machine.
import { strict as assert } from "node:assert";
import { promises as fs } from "node:fs";
import { elfInterpreter } from "../../../runner/pg-upgrade/old-binaries";

describe("elfInterpreter", () => {
    it("reads the loader a dynamically linked program names (PT_INTERP)", async () => {
        const node = await fs.readFile(process.execPath);
        const interp = elfInterpreter(node.subarray(0, 8192));
        assert.ok(interp && /^\/lib(64)?\/ld-(linux|musl)/.test(interp), `node's interpreter: ${interp}`);
        assert.equal(
            elfInterpreter((await fs.readFile("/bin/ls")).subarray(0, 8192)),
            interp,
            "ls and node use the same loader",
        );
    });

    it("says undefined for what is not a 64-bit ELF program", () => {
        assert.equal(elfInterpreter(Buffer.from("#!/bin/sh\necho not elf\n".padEnd(128, " "))), undefined);
        assert.equal(elfInterpreter(Buffer.alloc(10)), undefined);
    });
});
