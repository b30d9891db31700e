// Rehearsal: the whole upgrade on a copy while a client keeps writing to the live old cluster, then the real
// upgrade. The old cluster's data and connections are never disturbed. The prediction is printed beside the real
// downtime, never asserted against it: a timing bound makes a test depend on how busy the machine is.
import { strict as assert } from "node:assert";
import { run } from "../../runner/docker/process";
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
    await client.query(
        "CREATE TABLE IF NOT EXISTS live_writes (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())",
    );
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
    // When each command finished, to time the real downtime (from the end of prepare, which runs before it).
    const finished = new Map<string, number>();
    const applier = new Applier(async (r) => void finished.set(r.name, Date.now()));
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
        assert.ok(
            report.liveWrites.some((w: string) => w.startsWith("table synapse.public.live_writes")),
            "the writes during the rehearsal are seen as live writes",
        );
        assert.equal(await containerState(`${PREFIX}pg15-rehearsal-17`), "absent");
        assert.equal(await volumeExists(`${PREFIX}pg15-rehearsal-17-data`), false);
        assert.equal(writer.counts.failed, 0, writer.counts.errors.join("; "));
        assert.ok(writer.counts.ok > 50, `the client kept writing (${writer.counts.ok} rows)`);
        const c = await connect(LOGIN, "synapse");
        const rows = (await c.query("SELECT count(*)::int AS n FROM live_writes")).rows[0].n;
        await c.end();
        assert.equal(rows, writer.counts.ok, "every write the client made is in the old cluster");
        predicted = report.predictedDowntimeSeconds;
        console.log(
            `      rehearsal: predicted downtime ${predicted} s (${Object.entries(report.timings)
                .map(([k, v]) => `${k} ${v}`)
                .join(", ")})`,
        );
    });

    it("keeps the rehearsal's server with --keep and prints its name", async () => {
        const { stdout } = await runShell(
            `npx --no-install synapse-pg rehearse --old ${PREFIX}pg15 --major 17 --image ${TEST_IMAGE}:17 --keep`,
            { SYNAPSE_PG_PASSWORD: PASSWORD },
        );
        assert.match(stdout, /rehearse: kept sptest-reh-pg15-rehearsal-17 running/);
        assert.equal(await containerState(`${PREFIX}pg15-rehearsal-17`), "running");
        await run("docker", ["rm", "-f", `${PREFIX}pg15-rehearsal-17`]);
        await run("docker", ["volume", "rm", "-f", `${PREFIX}pg15-rehearsal-17-data`]);
    });

    let predictedPhysical = 0;
    it("rehearses method pg_upgrade on a physical copy while a client writes: an exact comparison, nothing left, no write disturbed", async () => {
        const count = async () => {
            const c = await connect(LOGIN, "synapse");
            try {
                return (await c.query("SELECT count(*)::int AS n FROM live_writes")).rows[0].n as number;
            } finally {
                await c.end();
            }
        };
        const before = await count();
        const writer = await startWriter();
        let report: any;
        try {
            const d = await declare(
                { ...base, version: "17", upgradeFrom: "15", rehearse: "true", method: "pg_upgrade" },
                PASSWORD,
            );
            const r = d.byName("rehearse-15-to-17-run");
            assert.match(r.inputs.create, / --method pg_upgrade --json$/);
            const { stdout } = await runShell(r.inputs.create, { SYNAPSE_PG_PASSWORD: PASSWORD });
            report = JSON.parse(stdout);
        } finally {
            await writer.stop();
        }
        assert.equal(report.method, "pg_upgrade");
        assert.equal(report.verified, true, JSON.stringify(report.problems));
        assert.deepEqual(report.problems, []);
        assert.deepEqual(
            report.liveWrites,
            [],
            "the copy is compared with itself before and after pg_upgrade: no live writes",
        );
        assert.match(report.target.version, /^17\./);
        assert.ok(report.timings.upgrade > 0 && report.timings.dump === undefined, JSON.stringify(report.timings));
        assert.equal(
            report.pgUpgradeVia,
            "link",
            "rehearsed as the real run does it: --link on a standby made before the downtime",
        );
        for (const gone of [
            `${PREFIX}pg15-rehearsal-17`,
            `${PREFIX}pg15-rehearsal-17-source`,
            `${PREFIX}pg15-rehearsal-17-standby`,
        ])
            assert.equal(await containerState(gone), "absent", gone);
        assert.equal(await volumeExists(`${PREFIX}pg15-rehearsal-17-source-data`), false);
        assert.equal(writer.counts.failed, 0, writer.counts.errors.join("; "));
        assert.equal(await count(), before + writer.counts.ok, "every write the client made is in the old cluster");
        predictedPhysical = report.predictedDowntimeSeconds;
        console.log(
            `      rehearsal, pg_upgrade: predicted downtime ${predictedPhysical} s (${Object.entries(report.timings)
                .map(([k, v]) => `${k} ${v}`)
                .join(", ")})`,
        );
    });

    it("the real upgrade after the rehearsal completes (prediction and real downtime printed side by side)", async () => {
        const start = Date.now();
        await up({ version: "17", upgradeFrom: "15" });
        const real = (Date.now() - start) / 1000;
        console.log(
            `      real upgrade: ${real.toFixed(1)} s; predicted ${predicted} s (${((predicted / real - 1) * 100).toFixed(0)}%)`,
        );
        assert.ok(predicted > 0, "the rehearsal predicted a downtime");
        assert.equal(await containerState(`${PREFIX}pg17`), "running", "the real upgrade switched to 17");
    });

    it("the real pg_upgrade after its rehearsal completes (prediction and real downtime from the end of prepare printed side by side)", async () => {
        await up({ version: "15" }); // revert: nothing was written to 17
        await up({ version: "17", upgradeFrom: "15", method: "pg_upgrade", attempt: "2" });
        const real = (finished.get("pg17-serve")! - finished.get("upgrade-15-to-17-prepare")!) / 1000;
        const order = [
            "upgrade-15-to-17-prepare",
            "upgrade-15-to-17-preflight",
            "upgrade-15-to-17-upgrade",
            "upgrade-15-to-17-copy-config",
            "upgrade-15-to-17-verify",
            "upgrade-15-to-17-cutover",
            "pg17-serve",
        ];
        const steps = order
            .slice(1)
            .map(
                (s, i) =>
                    `${s.replace("upgrade-15-to-17-", "")} ${((finished.get(s)! - finished.get(order[i])!) / 1000).toFixed(1)}`,
            );
        console.log(
            `      real pg_upgrade upgrade: ${real.toFixed(1)} s (${steps.join(", ")}); predicted ${predictedPhysical} s (${((predictedPhysical / real - 1) * 100).toFixed(0)}%)`,
        );
        assert.ok(predictedPhysical > 0, "the rehearsal predicted a downtime");
        assert.equal(await containerState(`${PREFIX}pg17`), "running", "the real upgrade switched to 17");
    });
});
