// pg_upgrade's output, read as it runs: its lines printed as progress and kept, and the reason it failed (or
// undefined when it did not), which its exit status alone does not always tell.
import { Writable } from "node:stream";
import { TRACE } from "../docker/process";

/**
 * Why pg_upgrade failed, from its output, or undefined when it did not. A failure line fails it whatever the exit
 * status: a worker's failure (see --jobs above) was seen to end in "Upgrade Complete" and exit 0. pg_upgrade says
 * why from its first "fatal" (or "*failure*") line on, over several wrapped lines; a worker, in the line before
 * its "Failure, exiting".
 */
export function pgUpgradeFailure(output: string[], exitedNonZero: boolean): string | undefined {
    const lines = output.map((l) => l.trim()).filter((l) => l && !/^-+$/.test(l));
    const workerFailed = lines.findIndex((l) => l === "Failure, exiting");
    if (!exitedNonZero && workerFailed < 0 && !lines.includes("*failure*")) return undefined;
    const first = lines.findIndex((l) => /fatal$|failed check|^\*failure\*$/.test(l));
    const said =
        first >= 0
            ? lines.slice(first, first + 10)
            : workerFailed > 0
              ? lines.slice(workerFailed - 1, workerFailed + 1)
              : lines.slice(-4);
    return said.join(" ").replace(/\s+/g, " ").slice(0, 700);
}

/** Prints pg_upgrade's lines as it goes (progress in `pulumi up`) and keeps the last ones for an error. */
export class TailWriter extends Writable {
    readonly lines: string[] = [];
    private partial = "";
    private readonly started = Date.now();
    constructor(private readonly prefix: string) {
        super();
    }
    _write(chunk: Buffer, _enc: string, done: () => void): void {
        const parts = (this.partial + chunk.toString("utf8")).split("\n");
        this.partial = parts.pop()!;
        for (const line of parts) {
            // SYNAPSE_PG_TRACE=1 (see process.ts): with the time since pg_upgrade started.
            if (line.trim())
                process.stderr.write(`${this.prefix}${TRACE ? `+${Date.now() - this.started}ms ` : ""}${line}\n`);
            // All of it (pg_upgrade prints about 60 lines): a failure line early on must not scroll away.
            this.lines.push(line);
            if (this.lines.length > 1000) this.lines.shift();
        }
        done();
    }
}
