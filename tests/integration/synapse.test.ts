// A real Synapse (Debian's matrix-synapse) through the program's upgrades and reverts, used by Matrix clients
// over HTTP: its own schema (with its UNLOGGED tables), its own writes while the upgrade runs, its own reads of
// the whole history after each switch. What must hold each time: every message Synapse accepted is readable,
// logins work, new messages are accepted, and Synapse's log shows no database error.
import { strict as assert } from "node:assert";
import { declare } from "../fixtures/pulumi-graph";
import { MatrixClient, outageOf, SendRecord, startSender, waitForSynapse } from "../fixtures/matrix-client";
import { connect } from "../fixtures/snapshot";
import {
    databaseErrorsInLog,
    startSynapseServer,
    SynapseServer,
    synapseLog,
    SYNAPSE_IMAGE,
} from "../fixtures/synapse-server";
import { run } from "../../runner/docker/process";
import { Applier, runShell } from "./applier";
import { containerState, endSuite, startSuite, Suite, volumeExists } from "./docker-env";

const PREFIX = "sptest-syn-";
const PASSWORD = "synapse-db-Pässword-7";
const PORT = 25437;
const SYNAPSE_PORT = 28008;
const SYNAPSE = `${PREFIX}synapse`;
const USER_PASSWORD = "alice-and-bob-password";

describe("a real Synapse through upgrades and reverts (pg_upgrade 15 -> 17, revert after writes, dump 15 -> 17, a failed step, 17 -> 18, a minor update)", function () {
    this.timeout(20 * 60 * 1000);
    const applier = new Applier();
    let base: Record<string, string>;
    let suite: Suite | undefined;
    let synapse: SynapseServer;
    let alice: MatrixClient;
    let bob: MatrixClient;
    let room: string;
    /** Every message Synapse accepted (answered with an event id), in the order they were sent. */
    const accepted: string[] = [];
    /** What Synapse accepted while 15 served, before the first switch: what a revert to 15 must still have. */
    let acceptedOn15: string[] = [];
    const commandsSince = (mark: number) => applier.commandRuns.slice(mark);
    const stdoutOf = (mark: number, name: string) => commandsSince(mark).find((c) => c.name === name)?.stdout ?? "";
    // postgres:method is left unset: the default, with the step runner really asked which method is under way.
    const declared = (config: Record<string, string>) =>
        declare({ ...base, ...config }, PASSWORD, {
            methodUnderway: async (line) => (await runShell(line, {})).stdout,
        });
    const up = async (config: Record<string, string>) => applier.up(await declared(config));

    const say = async (who: MatrixClient, body: string) => {
        await who.send(room, body);
        accepted.push(body);
    };
    /** A user typing while `work` runs: what Synapse accepted joins `accepted`; the outage is printed. */
    const whileTyping = async (tag: string, work: () => Promise<void>): Promise<SendRecord[]> => {
        // Bounded: at most 4 sends a second for 10 minutes.
        const sender = startSender(bob, room, { intervalMs: 250, timeoutMs: 5000, maxSends: 2400, tag });
        let failure: unknown;
        try {
            await work();
            await sender.acceptedSince(Date.now() - sender.t0, 120_000);
        } catch (err) {
            failure = err;
        }
        const records = await sender.stop();
        accepted.push(...records.filter((r) => r.ok).map((r) => r.body));
        if (failure) throw failure;
        const outage = outageOf(records);
        console.log(
            `      ${tag}: ${records.length} sends, ${records.filter((r) => r.ok).length} accepted, outage seen by the client ${outage ? `${outage.seconds.toFixed(1)} s` : "none"}`,
        );
        return records;
    };
    /** The history as Synapse serves it holds every accepted message, in order; a login and a new message work. */
    const assertHomeserverWhole = async (since: string) => {
        const history = await (await MatrixClient.login(synapse.base, "alice", USER_PASSWORD)).messages(room);
        const missing = accepted.filter((b) => !history.includes(b));
        assert.deepEqual(
            missing,
            [],
            `messages Synapse accepted but no longer has (${missing.length} of ${accepted.length})`,
        );
        // Order only among messages sent one after the other; the typing user's sends overlap, as a client's may.
        const sequential = accepted.filter((b) => !/ \d+$/.test(b) || b.startsWith("before the upgrade"));
        assert.deepEqual(
            history.filter((b) => sequential.includes(b)),
            sequential,
            "messages sent one after the other keep their order",
        );
        await say(alice, `after ${since}`);
        assert.deepEqual(await databaseErrorsInLog(SYNAPSE, since), [], "Synapse's log shows no database error");
    };
    const holdersOfDb = async () => {
        const { stdout } = await run("docker", ["ps", "--filter", `network=${PREFIX}net`, "--format", "{{.Names}}"]);
        const names = stdout.split("\n").filter((n) => n.startsWith(`${PREFIX}pg`));
        const holders: string[] = [];
        for (const n of names) {
            const aliases = (
                await run("docker", [
                    "inspect",
                    "-f",
                    `{{json (index .NetworkSettings.Networks "${PREFIX}net").Aliases}}`,
                    n,
                ])
            ).stdout;
            if (aliases.includes('"db"')) holders.push(n);
        }
        return holders;
    };
    const now = () => new Date().toISOString();

    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17, 18]);
        await run("docker", ["image", "inspect", SYNAPSE_IMAGE]).catch(() => {
            throw new Error(`The test image ${SYNAPSE_IMAGE} is missing; run \`npm run images\` first.`);
        });
        // The database first, then Synapse on it; then the stack is told which containers are Synapse's (serve
        // refuses a name that does not exist: a typo would leave Synapse writing during an upgrade).
        const { method: _suiteMethod, ...suiteBase } = suite.base;
        base = suiteBase;
        await up({ version: "15" });
        synapse = await startSynapseServer({
            container: SYNAPSE,
            network: `${PREFIX}net`,
            dbHost: "db",
            dbUser: "synapse",
            dbName: "synapse",
            dbPassword: PASSWORD,
            port: SYNAPSE_PORT,
        });
        base = { ...base, synapseContainers: SYNAPSE };
        await up({ version: "15" });
        alice = await MatrixClient.register(synapse.base, "alice", USER_PASSWORD);
        bob = await MatrixClient.register(synapse.base, "bob", USER_PASSWORD);
        room = await alice.createRoom("upgrade");
        await bob.join(room);
        for (let i = 0; i < 20; i++) await say(i % 2 ? bob : alice, `before the upgrade ${i} ✓ ${"é".repeat(i)}`);
        assert.equal(await alice.uploadOneTimeKeys(5, "a"), 5);
    });

    afterEach(async function () {
        if (this.currentTest?.state === "failed") console.log(await synapseLog(SYNAPSE, 40));
    });

    after(async () => {
        await run("docker", ["rm", "-f", SYNAPSE]).catch(() => undefined);
        await run("docker", ["volume", "rm", "-f", `${SYNAPSE}-data`]).catch(() => undefined);
        await endSuite(PREFIX, suite);
    });

    it("Synapse's own schema on 15 has unlogged tables; pg_upgrade 15 -> 17 still links a standby and carries them, while a user types", async () => {
        const unlogged = await (async () => {
            const c = await connect({ port: PORT, user: "synapse", password: PASSWORD }, "synapse");
            try {
                return (
                    await c.query(
                        "SELECT relname FROM pg_class WHERE relpersistence = 'u' AND relkind = 'r' ORDER BY 1",
                    )
                ).rows.map((r) => r.relname);
            } finally {
                await c.end();
            }
        })();
        assert.ok(unlogged.includes("worker_read_write_locks"), `Synapse's unlogged tables: ${unlogged.join(", ")}`);
        const since = now();
        const mark = applier.commandRuns.length;
        const acceptedBefore = accepted.length;
        // postgres:method unset: the program asks the step runner which method is under way (none: pg_upgrade),
        // and asking creates nothing (a helper container's mount would create the new volume unlabelled).
        const plan = await declared({ version: "17", upgradeFrom: "15" });
        assert.ok(plan.find("upgrade-15-to-17-prepare"), plan.names().join(", "));
        assert.equal(await volumeExists(`${PREFIX}pgsql17`), false, "asking which method is under way created nothing");
        const records = await whileTyping("pg_upgrade 15->17", () => applier.up(plan));
        // No send can succeed while Synapse is stopped: those that succeeded before the first one after the outage
        // were written to 15, the rest to 17.
        const outage = outageOf(records)!;
        acceptedOn15 = [
            ...accepted.slice(0, acceptedBefore),
            ...records.filter((r) => r.ok && r.end < outage.to).map((r) => r.body),
        ];
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-prepare"),
            /prepare: the standby "sptest-syn-pg17-staging-standby" streams from "sptest-syn-pg15"; the upgrade will link its files, not copy the old data while Synapse is down; \d+ unlogged relation\(s\) \(synapse\.worker_read_write_locks/,
        );
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-upgrade"),
            /upgrade: pg_upgrade --link on the standby of "sptest-syn-pg15"/,
        );
        // Synapse's worker locks are usually gone once it stopped, but not always (seen both ways): what they hold
        // is copied; every sequence is set back to the old cluster's position. verify then compared every row.
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-upgrade"),
            /^upgrade: set \d+ sequence\(s\) to the old cluster's positions \(a standby's stand up to 32 values ahead\); unlogged tables, which a standby holds empty: (2 empty once writes stopped, nothing to copy|copied \d+ row\(s\) of synapse\.worker_read_write_locks.*)\.$/m,
        );
        assert.match(stdoutOf(mark, "upgrade-15-to-17-preflight"), /preflight: stopped Synapse \(sptest-syn-synapse\)/);
        assert.match(stdoutOf(mark, "pg17-serve"), /serve: started Synapse \(sptest-syn-synapse\)\./);
        assert.deepEqual(await holdersOfDb(), [`${PREFIX}pg17`], "one server answers to db");
        await assertHomeserverWhole(since);
        assert.equal(await alice.oneTimeKeyCount(), 5, "the one-time keys came across");
    });

    it("a revert after Synapse wrote to 17 is refused with the count, Synapse keeps serving on 17; accepted, one-time keys are cleared and uploaded again", async () => {
        const onlyOn17 = ["on 17 only 1", "on 17 only 2", "on 17 only 3"];
        for (const body of onlyOn17) await alice.send(room, body);
        let count = "";
        await assert.rejects(up({ version: "15" }), (err: Error) => {
            const m =
                /synapse-pg serve: Going back to "sptest-syn-pg15" would lose (\d+) event\(s\) written to "sptest-syn-pg17" since the switch at \S+; to accept that, set postgres:revertAcceptLoss \1 and run pulumi up again/.exec(
                    err.message,
                );
            assert.ok(m, err.message);
            count = m[1];
            return true;
        });
        assert.ok(
            Number(count) >= onlyOn17.length,
            `the count (${count}) includes the ${onlyOn17.length} messages written to 17`,
        );
        assert.deepEqual(await holdersOfDb(), [`${PREFIX}pg17`], "after the refusal exactly one server answers to db");
        assert.equal(await containerState(SYNAPSE), "running", "Synapse serves again");
        await waitForSynapse(synapse.base);
        const history17 = await alice.messages(room);
        assert.ok(
            onlyOn17.every((b) => history17.includes(b)),
            "still on 17, with what was written there",
        );

        // The count the refusal gave, accepted: what was written after the switch stays in 17 only.
        const since = now();
        const mark = applier.commandRuns.length;
        await up({ version: "15", revertAcceptLoss: count });
        assert.match(
            stdoutOf(mark, "pg15-serve"),
            new RegExp(
                `serve: reverted; ${count} event\\(s\\) written since the switch stay only in the newer cluster; cleared 5 one-time keys so clients upload fresh ones\\.`,
            ),
        );
        assert.deepEqual(await holdersOfDb(), [`${PREFIX}pg15`]);
        await waitForSynapse(synapse.base);
        const history15 = await alice.messages(room);
        assert.deepEqual(
            onlyOn17.filter((b) => history15.includes(b)),
            [],
            "what was written to 17 alone is not on 15",
        );
        assert.deepEqual(
            acceptedOn15.filter((b) => !history15.includes(b)),
            [],
            "everything accepted before the switch is there",
        );
        accepted.splice(0, accepted.length, ...acceptedOn15);
        assert.equal(await alice.oneTimeKeyCount(), 0, "one-time keys cleared");
        assert.equal(await alice.uploadOneTimeKeys(3, "b"), 3, "and the client can upload fresh ones");
        await say(alice, "back on 15");
        assert.deepEqual(await databaseErrorsInLog(SYNAPSE, since), [], "Synapse's log shows no database error");
        base = { ...base, revertAcceptLoss: "0" };
    });

    it("a step that fails before the switch (method directory) starts Synapse again on the old cluster, its history whole; fixed, the re-run completes", async () => {
        // Valid in 15, removed in 16: copy-config refuses it during the downtime.
        await runShell(
            `docker exec ${PREFIX}pg15 psql -U synapse -d postgres -c "ALTER SYSTEM SET vacuum_defer_cleanup_age = 10"`,
            {},
        );
        const upgrade = { version: "17", upgradeFrom: "15", method: "directory", attempt: "2" };
        const since = now();
        const first = applier.commandRuns.length;
        try {
            await assert.rejects(up(upgrade), (err: Error) => {
                assert.match(
                    err.message,
                    /synapse-pg copy-config: The new PostgreSQL rejects 1 setting\(s\).* "sptest-syn-pg15" takes connections again \(back on sptest-syn-net\) and Synapse \(sptest-syn-synapse\) was started again on the old cluster\./,
                );
                return true;
            });
        } finally {
            await runShell(
                `docker exec ${PREFIX}pg15 psql -U synapse -d postgres -c "ALTER SYSTEM RESET vacuum_defer_cleanup_age"`,
                {},
            );
        }
        // The 17 cluster that served before the revert was kept aside, never overwritten.
        assert.match(
            stdoutOf(first, "upgrade-15-to-17-restore"),
            /restore: the earlier 17 cluster, which served Synapse before a revert, was kept at /,
        );
        assert.deepEqual(await holdersOfDb(), [`${PREFIX}pg15`]);
        await waitForSynapse(synapse.base);
        await assertHomeserverWhole(since);

        // Synapse wrote to 15 after the dump (the login and message above): that copy must never be switched to.
        await assert.rejects(up(upgrade), (err: Error) => {
            assert.match(
                err.message,
                /synapse-pg verify: Synapse \("sptest-syn-synapse"\) was started again on the old cluster at \S+, after the new cluster's copy was taken \(\S+\), so the copy may lack what it wrote and the switch will not happen; run pulumi config set postgres:attempt <the next number> and pulumi up for a fresh copy\. Synapse \(sptest-syn-synapse\) was started again on the old cluster\./,
            );
            return true;
        });
        assert.deepEqual(await holdersOfDb(), [`${PREFIX}pg15`]);
        await waitForSynapse(synapse.base);

        const mark = applier.commandRuns.length;
        const since2 = now();
        await whileTyping("dump (directory) 15->17", () => up({ ...upgrade, attempt: "3" }));
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-restore"),
            /^restore: loaded \S+ \S+ into "sptest-syn-pg17-staging"\.$/m,
        );
        assert.deepEqual(await holdersOfDb(), [`${PREFIX}pg17`]);
        await assertHomeserverWhole(since2);
        // This upgrade is under way until 15 is retired: with postgres:method unset (a program whose default
        // changed since), the step runner finds the dump method in the new data and nothing is re-planned.
        const { method: _explicit, ...unset } = { ...upgrade, attempt: "3" };
        const again = await declared(unset);
        assert.ok(
            again.find("upgrade-15-to-17-dump") && !again.find("upgrade-15-to-17-prepare"),
            again.names().join(", "),
        );
    });

    it("17 -> 18 with pg_upgrade, then a minor update of 18, Synapse reading its history after each", async () => {
        await up({ version: "17" }); // retire 15
        const since = now();
        const mark = applier.commandRuns.length;
        await whileTyping("pg_upgrade 17->18", () => up({ version: "18", upgradeFrom: "17", attempt: "4" }));
        assert.match(
            stdoutOf(mark, "upgrade-17-to-18-upgrade"),
            /upgrade: pg_upgrade --link on the standby of "sptest-syn-pg17"/,
        );
        assert.deepEqual(await holdersOfDb(), [`${PREFIX}pg18`]);
        await assertHomeserverWhole(since);

        await up({ version: "18" }); // retire 17
        await run("docker", ["tag", "synapse-pg-test/postgres:18", "synapse-pg-test/postgres:18.99"]);
        const since2 = now();
        await whileTyping("minor update 18 -> 18.99", () => up({ version: "18.99" }));
        assert.deepEqual(await holdersOfDb(), [`${PREFIX}pg18`]);
        assert.equal(
            (await run("docker", ["inspect", "-f", "{{.Config.Image}}", `${PREFIX}pg18`])).stdout.trim(),
            "synapse-pg-test/postgres:18.99",
        );
        await assertHomeserverWhole(since2);
    });
});
