// Rehearsal: the whole upgrade on a copy while a client keeps writing to the live old cluster, then the real
// upgrade. The old cluster's data and connections are never disturbed, and the predicted downtime is close to
// the real one.
import { strict as assert } from "node:assert";
import { run } from "../../runner/process";
import { declare } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { connect } from "../fixtures/snapshot";
import { Applier, runShell } from "./applier";
import { containerState, endSuite, startSuite, Suite, TEST_IMAGE, volumeExists } from "./docker-env";

const PREFIX = "sptest-reh-";
const PASSWORD = "rehearsal-Pässword-5";
const PORT = 25435;
const LOGIN = { port: PORT, user: "synapse", password: PASSWORD };

/** Inserts a row every 20 ms until stopped (bounded: 6000 rows, 5 minutes); counts what succeeded and failed. */
async function startWriter() {
    const client = await connect(LOGIN, "synapse", "live-writer");
    await client.query("CREATE TABLE IF NOT EXISTS live_writes (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())");
    const counts = { ok: 0, failed: 0, errors: [] as string[] };
    let running = true;
    const deadline = Date.now() + 5 * 60 * 1000;
    const loop = (async () => {
        while (running && counts.ok + counts.failed < 6000 && Date.now() < deadline) {
            try {
                await client.query("INSERT INTO live_writes DEFAULT VALUES");
                counts.ok++;
            } catch (err) {
                counts.failed++;
                counts.errors.push((err as Error).message);
            }
            await new Promise((r) => setTimeout(r, 20));
        }
    })();
    return {
        counts,
        async stop() {
            running = false;
            await loop;
            await client.end();
        },
    };
}

describe("rehearsal: the upgrade on a copy while Synapse keeps writing", function () {
    this.timeout(15 * 60 * 1000);
    const applier = new Applier();
    let base: Record<string, string>;
    const up = async (cfg: Record<string, string>) => applier.up(await declare({ ...base, ...cfg }, PASSWORD));
    let predicted = 0;

    let suite: Suite | undefined;

    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17]);
        base = suite.base;
        await up({ version: "15" });
        await seedSynapse(`${PREFIX}pg15`, "synapse", { sizeMB: 120, seed: 13 });
    });

    after(() => endSuite(PREFIX, suite));

    it("rehearses from the stack option while a client writes: verified, no problems, nothing left behind, no write disturbed", async () => {
        const writer = await startWriter();
        let report: any;
        try {
            const d = await declare({ ...base, version: "17", upgradeFrom: "15", rehearse: "true" }, PASSWORD);
            const r = d.byName("rehearse-15-to-17-run");
            const { stdout } = await runShell(r.inputs.create, { SYNAPSE_PG_PASSWORD: PASSWORD });
            report = JSON.parse(stdout);
        } finally {
            await writer.stop();
        }
        assert.equal(report.verified, true, JSON.stringify(report.problems));
        assert.deepEqual(report.problems, []);
        assert.equal(report.target.kept, false);
        assert.match(report.target.version, /^17\./);
        assert.ok(report.liveWrites.some((w: string) => w.startsWith("table synapse.public.live_writes")), "the writes during the rehearsal are seen as live writes");
        assert.equal(await containerState(`${PREFIX}pg15-rehearsal-17`), "absent");
        assert.equal(await volumeExists(`${PREFIX}pg15-rehearsal-17-data`), false);
        assert.equal(writer.counts.failed, 0, writer.counts.errors.join("; "));
        assert.ok(writer.counts.ok > 50, `the client kept writing (${writer.counts.ok} rows)`);
        const c = await connect(LOGIN, "synapse");
        const rows = (await c.query("SELECT count(*)::int AS n FROM live_writes")).rows[0].n;
        await c.end();
        assert.equal(rows, writer.counts.ok, "every write the client made is in the old cluster");
        predicted = report.predictedDowntimeSeconds;
        console.log(`      rehearsal: predicted downtime ${predicted} s (${Object.entries(report.timings).map(([k, v]) => `${k} ${v}`).join(", ")})`);
    });

    it("keeps the rehearsal's server with --keep and prints its name", async () => {
        const { stdout } = await runShell(`npx --no-install synapse-pg rehearse --container ${PREFIX}pg15 --to 17 --image ${TEST_IMAGE}:17 --keep`, { SYNAPSE_PG_PASSWORD: PASSWORD });
        assert.match(stdout, /rehearse: kept sptest-reh-pg15-rehearsal-17 running/);
        assert.equal(await containerState(`${PREFIX}pg15-rehearsal-17`), "running");
        await run("docker", ["rm", "-f", `${PREFIX}pg15-rehearsal-17`]);
        await run("docker", ["volume", "rm", "-f", `${PREFIX}pg15-rehearsal-17-data`]);
    });

    it("predicts the real upgrade's downtime within 30%", async () => {
        const start = Date.now();
        await up({ version: "17", upgradeFrom: "15" });
        const real = (Date.now() - start) / 1000;
        console.log(`      real upgrade: ${real.toFixed(1)} s; predicted ${predicted} s (${((predicted / real - 1) * 100).toFixed(0)}%)`);
        assert.ok(Math.abs(predicted - real) / real <= 0.3, `predicted ${predicted} s, real ${real.toFixed(1)} s`);
    });
});
