// The write fence on real containers: from the copy point to the switch the old cluster takes no write from
// anyone. Clients that write over Synapse's network race every step boundary of an upgrade by dump and by
// pg_upgrade --link (one of them holding its session open through the whole downtime): each write they were told
// had committed is in the new cluster, row for row, and the ones that came after the copy point were refused. A
// write the network fence cannot stop (a session inside the old container) after verify makes cutover refuse; the
// old cluster then takes connections again, and a new attempt switches with that write.
import { strict as assert } from "node:assert";
import { run } from "../../runner/docker/process";
import { declare } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { connect } from "../fixtures/snapshot";
import { Applier } from "./applier";
import { containerState, endSuite, startSuite, Suite, TEST_IMAGE, volumesNamed } from "./docker-env";

const PREFIX = "sptest-fence-";
const PASSWORD = "fence-Pässword-8";
const PORT = 25438;
const OLD = `${PREFIX}pg15`;

/** A client writing over the network as Synapse would: what it was told had committed, and whether it ever could. */
interface Writer {
    tag: string;
    kind: "insert" | "update";
    /** The numbers whose transaction (one INSERT and one UPDATE) committed, as the server acknowledged. */
    acked(): Promise<number[]>;
}

describe("the write fence: nothing written to the old cluster after the copy point is lost", function () {
    this.timeout(20 * 60 * 1000);
    const login = { port: PORT, user: "synapse", password: PASSWORD };
    let suite: Suite | undefined;
    let base: Record<string, string>;
    let applier: Applier;
    let afterStep: (name: string) => Promise<void> = async () => undefined;
    const up = async (cfg: Record<string, string>) => applier.up(await declare({ ...base, ...cfg }, PASSWORD));
    const sql = async (text: string) => {
        const c = await connect(login, "synapse");
        try {
            return (await c.query(text)).rows;
        } finally {
            await c.end();
        }
    };

    /**
     * A bounded writer in its own container on Synapse's network, reaching the server by its alias "db" like
     * Synapse. One psql session for all its writes (it does not reconnect: a session ended by the fence stays
     * ended), each a transaction, acknowledged by a SELECT of "ack <n>" that runs only after COMMIT returned.
     */
    function startWriter(tag: string, kind: "insert" | "update", writes: number): Writer {
        // insert: a row and the counter, in one transaction; update: only the counter's row, made beforehand.
        const write =
            kind === "insert"
                ? `BEGIN; INSERT INTO fence_probe (tag, n) VALUES ('${tag}', $i); INSERT INTO fence_counter VALUES ('${tag}', $i) ON CONFLICT (tag) DO UPDATE SET n = EXCLUDED.n; COMMIT;`
                : `UPDATE fence_counter SET n = $i WHERE tag = '${tag}';`;
        const script = `for i in $(seq 1 ${writes}); do
  echo "${write}"; echo "SELECT 'ack $i';"
  sleep 0.05
done | timeout 60 psql -h db -U synapse -d synapse -X -q -A -t -v ON_ERROR_STOP=1 2>&1; exit 0`;
        const done = run(
            "docker",
            [
                "run",
                "--rm",
                "--name",
                `${PREFIX}writer-${tag}`,
                "--network",
                `${PREFIX}net`,
                "-e",
                "PGPASSWORD",
                "--entrypoint",
                "sh",
                `${TEST_IMAGE}:15`,
                "-c",
                script,
            ],
            { env: { PGPASSWORD: PASSWORD } },
        ).then(
            (r) => r.stdout,
            (err: Error) => err.message,
        );
        return {
            tag,
            kind,
            acked: async () =>
                (await done)
                    .split("\n")
                    .map((l) => /^ack (\d+)$/.exec(l.trim()))
                    .filter(Boolean)
                    .map((m) => Number(m![1])),
        };
    }

    async function expectAckedInNewCluster(major: number, list: Writer[]): Promise<Record<string, number>> {
        const counts: Record<string, number> = {};
        const [{ v }] = await sql("SELECT current_setting('server_version_num')::int / 10000 AS v");
        assert.equal(v, major, `PostgreSQL ${major} serves`);
        for (const w of list) {
            const acked = await w.acked();
            if (w.kind === "insert") {
                const rows = (await sql(`SELECT n FROM fence_probe WHERE tag = '${w.tag}' ORDER BY n`)).map(
                    (r) => r.n as number,
                );
                const missing = acked.filter((n) => !rows.includes(n));
                assert.deepEqual(
                    missing,
                    [],
                    `writer ${w.tag}: every row it was told had committed is in ${major} (acked ${acked.length}, found ${rows.length})`,
                );
            }
            const counter = (await sql(`SELECT n FROM fence_counter WHERE tag = '${w.tag}'`))[0]?.n ?? 0;
            assert.ok(
                counter >= Math.max(0, ...acked),
                `writer ${w.tag}: its last acknowledged UPDATE (${Math.max(0, ...acked)}) holds in ${major}, found ${counter}`,
            );
            counts[w.tag] = acked.length;
        }
        return counts;
    }

    /** Back to 15 serving with the tables reset, and the 17 data out of the way. */
    async function resetTo15(): Promise<void> {
        afterStep = async () => undefined;
        await up({ version: "15" });
        for (const v of await volumesNamed(`${PREFIX}pgsql17`)) await run("docker", ["volume", "rm", "-f", v]);
        applier.state.delete("pg17-data");
        await sql("TRUNCATE fence_probe; DELETE FROM fence_counter");
    }

    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17]);
        base = suite.base;
        applier = new Applier((r) => afterStep(r.name));
        await up({ version: "15" });
        await seedSynapse(OLD, "synapse", { sizeMB: 4, seed: 8 });
        await sql(
            "CREATE TABLE fence_probe (tag text, n int, PRIMARY KEY (tag, n)); CREATE TABLE fence_counter (tag text PRIMARY KEY, n int NOT NULL)",
        );
    });
    after(() => endSuite(PREFIX, suite));

    /** At every step boundary a new writer starts and races the next step; the ones inside the fence are refused. */
    async function raceEveryBoundary(cfg: Record<string, string>, fencedSteps: string[]): Promise<void> {
        const started: Record<string, Writer> = {};
        // preflight refuses a client already connected, so the writer that spans the downtime (UPDATEs only, one
        // session, 50 ms apart for up to 40 s) connects right after it, as an unlisted worker would.
        await sql("INSERT INTO fence_counter VALUES ('through', 0)");
        afterStep = async (name) => {
            const tag = name.replace(/^upgrade-15-to-17-/, "");
            // Not during pg_upgrade's prepare: preflight, next, would refuse the connected client.
            if (tag === "prepare") return;
            started[tag] = startWriter(tag, "insert", 40);
            if (tag !== "preflight") return;
            started.through = startWriter("through", "update", 800);
            // The next step starts only once this session has committed: it is writing when the downtime begins.
            for (
                let i = 0;
                i < 100 && Number((await sql("SELECT n FROM fence_counter WHERE tag = 'through'"))[0].n) === 0;
                i++
            ) {
                await new Promise((r) => setTimeout(r, 200));
            }
        };
        await up({ ...cfg, version: "17", upgradeFrom: "15" });
        afterStep = async () => undefined;
        const counts = await expectAckedInNewCluster(17, Object.values(started));
        console.log(
            `      writes acknowledged per writer (named by the step it started after): ${JSON.stringify(counts)}`,
        );
        for (const step of fencedSteps) {
            assert.equal(
                counts[step],
                0,
                `the writer started after ${step} was refused by the fence (${JSON.stringify(counts)})`,
            );
        }
        assert.ok(counts["pg17-serve"] > 0, `a writer after the switch writes to 17 (${JSON.stringify(counts)})`);
        assert.ok(
            counts.through > 0,
            `the session open through the downtime wrote until the fence ended it (${JSON.stringify(counts)})`,
        );
    }

    it("dump method: writers racing every step boundary lose nothing they were told was written", async () => {
        await raceEveryBoundary({ method: "directory" }, ["dump", "restore", "copy-config", "verify"]);
        assert.equal(await containerState(OLD), "stopped");
        await resetTo15();
    });

    it("a write the network fence cannot stop (a session inside the old container) after verify: cutover refuses, the old cluster takes connections again, a new attempt switches with it", async () => {
        await sql("INSERT INTO fence_counter VALUES ('inside', 0)");
        const updates = Array.from(
            { length: 10 },
            (_, i) => `UPDATE fence_counter SET n = ${i + 1} WHERE tag = 'inside';`,
        ).join(" ");
        afterStep = async (name) => {
            if (name !== "upgrade-15-to-17-verify") return;
            await run("docker", [
                "exec",
                OLD,
                "psql",
                "-U",
                "synapse",
                "-d",
                "synapse",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                `INSERT INTO fence_probe VALUES ('inside', 1); ${updates}`,
            ]);
        };
        await assert.rejects(up({ version: "17", upgradeFrom: "15" }), (err: Error) => {
            assert.match(
                err.message,
                new RegExp(
                    `synapse-pg cutover: The old cluster "${OLD}" took writes after the new cluster's copy was taken \\([^)]+\\): 11 row\\(s\\) inserted, updated or deleted in database synapse; the copy lacks them, so the switch will not happen; run pulumi config set postgres:attempt <the next number> and pulumi up for a fresh copy\\. "${OLD}" takes connections again \\(back on ${PREFIX}net\\)\\.`,
                ),
            );
            return true;
        });
        afterStep = async () => undefined;
        // Back on Synapse's network: the published port and the alias reach 15, which holds the write.
        assert.deepEqual(
            await sql(
                "SELECT current_setting('server_version_num')::int / 10000 AS v, (SELECT n FROM fence_counter WHERE tag = 'inside') AS n",
            ),
            [{ v: 15, n: 10 }],
        );
        const overNetwork = startWriter("after-refusal", "insert", 5);
        assert.deepEqual(
            await overNetwork.acked(),
            [1, 2, 3, 4, 5],
            "a client on Synapse's network writes to 15 again",
        );
        assert.equal(
            (await run("docker", ["ps", "-a", "-q", "--filter", `name=${OLD}-fence`])).stdout.trim(),
            "",
            "no fence record is left",
        );

        await up({ version: "17", upgradeFrom: "15", attempt: "2" });
        await expectAckedInNewCluster(17, [overNetwork]);
        assert.deepEqual(
            await sql(
                "SELECT (SELECT n FROM fence_counter WHERE tag = 'inside') AS n, (SELECT count(*)::int FROM fence_probe WHERE tag = 'inside') AS rows",
            ),
            [{ n: 10, rows: 1 }],
            "the new attempt's copy holds the write made inside the old container",
        );
        await resetTo15();
    });

    it("pg_upgrade --link on a standby: writers racing every step boundary, one through the whole downtime, lose nothing", async () => {
        await raceEveryBoundary({ method: "pg_upgrade" }, ["upgrade", "copy-config", "verify"]);
        await resetTo15();
    });
});
