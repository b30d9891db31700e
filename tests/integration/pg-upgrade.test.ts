// method pg_upgrade on real containers: the old image's own binaries run inside the new image; pg_upgrade --link on
// a standby made before the downtime (the old server never stops), or --copy of the old data where there is no
// usable standby; each step run twice; a refusal by pg_upgrade's own checks, with the old cluster running and
// unchanged; reverts to the untouched old data after both ways; 17 -> 18, where initdb's new default (data
// checksums on) must not meet an old cluster without them. The data is compared with the tests' own snapshot,
// row for row.
import { strict as assert } from "node:assert";
import { spawn } from "node:child_process";
import { declare, DeclaredResource } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { ClusterSnapshot, connect, countRows, logicalContent, snapshotCluster } from "../fixtures/snapshot";
import { Applier, REPO, runShell } from "./applier";
import { containerState, endSuite, startSuite, Suite } from "./docker-env";
import { PASSWORD_ENV } from "../../runner/names";

const PREFIX = "sptest-pgu-";
const PASSWORD = "pg_upgrade-Pässword-5";
const PORT = 25436;

describe("method pg_upgrade in real containers: 15 -> 17, a refusal, revert, 17 -> 18", function () {
    this.timeout(15 * 60 * 1000);
    let base: Record<string, string>;
    let original: ClusterSnapshot;
    const login = { port: PORT, user: "synapse", password: PASSWORD };
    const reruns: string[] = [];
    // Every step command (the create, or the update the applier ran) runs a second time right after it succeeded, as
    // a person re-running it by hand would.
    // Runs after a named step (and its re-run) succeeded: a fault injected between two steps.
    const between: Record<string, () => Promise<void>> = {};
    const applier = new Applier(async (r: DeclaredResource, env, line) => {
        const again = await runShell(line, env);
        reruns.push(`${r.name}: ${again.stdout.trim().split("\n").pop()}`);
        await between[r.name]?.();
    });
    const stdoutOf = (since: number, name: string) =>
        applier.commandRuns.slice(since).find((c) => c.name === name)!.stdout;
    const up = async (config: Record<string, string>) => {
        reruns.length = 0;
        await applier.up(await declare({ ...base, method: "pg_upgrade", ...config }, PASSWORD));
    };
    const commandsRun = (since: number) => applier.commandRuns.slice(since).map((c) => c.name);
    const sql = async (query: string, database = "synapse") => {
        const c = await connect(login, database);
        try {
            return (await c.query(query)).rows;
        } finally {
            await c.end();
        }
    };

    let suite: Suite | undefined;
    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17, 18]);
        // No backupDir: pg_upgrade writes no dump (the old data itself is the way back).
        const { backupDir: _unused, ...rest } = suite.base;
        base = rest;
        await up({ version: "15" });
        await seedSynapse(`${PREFIX}pg15`, "synapse", { sizeMB: 8, seed: 5 });
        original = await snapshotCluster(login);
    });
    after(() => endSuite(PREFIX, suite));

    it("stops before the switch when pg_upgrade's own checks refuse the old cluster, which runs on unchanged", async () => {
        // A reg* column: its OIDs do not survive pg_upgrade, which refuses such tables. A dump method would not care.
        // Made after prepare, whose pg_upgrade --check refuses one made before (before-downtime.test.ts).
        let withTrap: Awaited<ReturnType<typeof snapshotCluster>> | undefined;
        between["upgrade-15-to-17-prepare"] = async () => {
            await sql("CREATE TABLE public.synapse_pg_regproc_trap (f regproc)");
            withTrap = await snapshotCluster(login);
        };
        const mark = applier.commandRuns.length;
        await assert.rejects(
            up({ version: "17", upgradeFrom: "15" }).finally(() => delete between["upgrade-15-to-17-prepare"]),
            (err: Error) => {
                // On the standby: the old server was never stopped.
                assert.match(
                    err.message,
                    /synapse-pg upgrade: pg_upgrade stopped before the switch, the old cluster is unchanged and running: .*reg\* data types in user tables/,
                );
                return true;
            },
        );
        assert.deepEqual(
            commandsRun(mark),
            ["pg17-before-replace", "upgrade-15-to-17-prepare", "upgrade-15-to-17-preflight"],
            "the new container's check, prepare and preflight ran; upgrade failed",
        );
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-prepare"),
            /prepare: postgres \(PostgreSQL\) 15\.\S+ .*runs inside synapse-pg-test\/postgres:17 from synapse-pg-binaries-\w+; new cluster initialised in "sptest-pgu-pg17-staging" \(stopped\)\./,
        );
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-prepare"),
            /prepare: the standby "sptest-pgu-pg17-staging-standby" streams from "sptest-pgu-pg15"; the upgrade will link its files, not copy the old data while Synapse is down\./,
        );
        assert.equal(await containerState(`${PREFIX}pg15`), "running", "the old cluster is running");
        assert.equal(await containerState(`${PREFIX}pg17-staging-standby`), "absent", "the promoted standby is gone");
        assert.deepEqual(
            logicalContent(await snapshotCluster(login)),
            logicalContent(withTrap!),
            "and holds exactly what it held",
        );
        await sql("DROP TABLE public.synapse_pg_regproc_trap");
    });

    it("upgrades 15 -> 17 with pg_upgrade --copy (the failed attempt's half-made cluster made again), each step twice", async () => {
        const mark = applier.commandRuns.length;
        await up({ version: "17", upgradeFrom: "15" });
        assert.deepEqual(
            commandsRun(mark),
            [
                "upgrade-15-to-17-upgrade",
                "upgrade-15-to-17-copy-config",
                "upgrade-15-to-17-verify",
                "upgrade-15-to-17-cutover",
                "pg17-serve",
            ],
            "the failed step and those after it run; prepare and preflight had succeeded",
        );
        const upgrade = applier.commandRuns[mark];
        assert.match(upgrade.stderr, /upgrade: new cluster prepared again/, "pg_upgrade's leftovers were not trusted");
        // The re-run makes no standby while Synapse is down: it copies.
        assert.match(
            upgrade.stdout,
            /upgrade: pg_upgrade --copy from "sptest-pgu-pg15" into "sptest-pgu-pg17-staging" in [\d.]+ s; the old cluster is unchanged and running again\./,
        );
        assert.ok(
            reruns.some((r) =>
                /upgrade-15-to-17-upgrade: upgrade: "sptest-pgu-pg17-staging" already holds the upgraded cluster; nothing to do\./.test(
                    r,
                ),
            ),
            reruns.join("\n"),
        );
        const after = await snapshotCluster(login);
        assert.match(after.version, /^17\./);
        assert.deepEqual(logicalContent(after), logicalContent(original));
        const { tables, rows } = countRows(after);
        console.log(`      pg_upgrade path 15->17: ${tables} tables, ${rows} rows compared row for row`);
        assert.equal(await containerState(`${PREFIX}pg15`), "stopped");
        assert.equal(await containerState(`${PREFIX}pg17-staging`), "absent");
        // Statistics: the first stage before the switch, the full ANALYZE started by serve in the background.
        const analyzed = await sql("SELECT count(*)::int AS n FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL");
        assert.ok(analyzed[0].n > 100, `tables analyzed: ${analyzed[0].n}`);
    });

    it("reverts to 15: the old data, never written by pg_upgrade, serves again exactly as it was", async () => {
        await up({ version: "15" });
        const reverted = await snapshotCluster(login);
        assert.match(reverted.version, /^15\./);
        assert.deepEqual(logicalContent(reverted), logicalContent(original));
        assert.equal(await containerState(`${PREFIX}pg17`), "absent");
    });

    it("an upgrade given up after prepare: the prepare resource's delete (pulumi destroy, or the upgrade taken out) removes its standby", async () => {
        const standby = `${PREFIX}pg17-staging-standby`;
        const config = { version: "17", upgradeFrom: "15", attempt: "2" };
        between["upgrade-15-to-17-prepare"] = async () => {
            throw new Error("the user gives up after prepare");
        };
        try {
            await assert.rejects(up(config), /the user gives up after prepare/);
        } finally {
            delete between["upgrade-15-to-17-prepare"];
        }
        assert.equal(await containerState(standby), "running", "prepare left its standby streaming");
        // Exactly what the engine runs to delete the prepare resource.
        const remove = (await declare({ ...base, method: "pg_upgrade", ...config }, PASSWORD)).byName(
            "upgrade-15-to-17-prepare",
        ).inputs.delete as string;
        assert.equal(
            (await runShell(remove, {})).stdout.trim(),
            `remove-standby: the standby "${standby}" was removed; the old cluster was only read by it and is unchanged.`,
        );
        assert.equal(await containerState(standby), "absent");
        assert.equal(
            (await runShell(remove, {})).stdout.trim(),
            `remove-standby: there is no standby "${standby}"; nothing to do.`,
        );
        // Taken out of the stack: the engine runs that delete once more, after 15's serve.
        const mark = applier.deleteRuns.length;
        await up({ version: "15" });
        assert.deepEqual(
            applier.deleteRuns.slice(mark).map((d) => [d.name, d.stdout.trim()]),
            [["upgrade-15-to-17-prepare", `remove-standby: there is no standby "${standby}"; nothing to do.`]],
        );
        const reverted = await snapshotCluster(login);
        assert.match(reverted.version, /^15\./);
        assert.deepEqual(logicalContent(reverted), logicalContent(original));
    });

    it("a setting the new major rejects stops prepare, before the downtime, with file, line and the way out", async () => {
        // Valid in 15, removed in 16. prepare carries the configuration across while Synapse still serves.
        await runShell(
            `docker exec ${PREFIX}pg15 psql -U synapse -d postgres -c "ALTER SYSTEM SET vacuum_defer_cleanup_age = 10"`,
            {},
        );
        try {
            await assert.rejects(up({ version: "17", upgradeFrom: "15", attempt: "2" }), (err: Error) => {
                assert.match(
                    err.message,
                    /synapse-pg prepare: The new PostgreSQL rejects 1 setting\(s\) of the old configuration, so the upgrade stops before the switch: postgresql\.auto\.conf line \d+: vacuum_defer_cleanup_age \(removed in 16: delete the line.*`pulumi config set postgres:dropSettings vacuum_defer_cleanup_age`, and run pulumi up again\./,
                );
                return true;
            });
            assert.equal(
                await containerState(`${PREFIX}pg17-staging`),
                "stopped",
                "prepare stops the new cluster it could not finish",
            );
            assert.equal(
                await containerState(`${PREFIX}pg17-staging-standby`),
                "absent",
                "no standby before the configuration is accepted",
            );
        } finally {
            await runShell(
                `docker exec ${PREFIX}pg15 psql -U synapse -d postgres -c "ALTER SYSTEM RESET vacuum_defer_cleanup_age"`,
                {},
            );
        }
        await up({ version: "15" });
        assert.deepEqual(logicalContent(await snapshotCluster(login)), logicalContent(original));
    });

    it("upgrades 15 -> 17 with pg_upgrade --link on a standby, unlogged tables and sequences carried across; a revert finds the old data as it was", async () => {
        // A real Synapse has unlogged tables (worker_read_write_locks): a standby holds them empty, so what they
        // hold once writes stopped is carried across; they must not turn the upgrade into a copy of all the data.
        await sql(`CREATE UNLOGGED TABLE public.synapse_pg_unlogged_rows (id int PRIMARY KEY, note text);
                   INSERT INTO public.synapse_pg_unlogged_rows SELECT g, 'row ' || g FROM generate_series(1, 250) g;
                   CREATE UNLOGGED TABLE public.synapse_pg_unlogged_empty (id int);
                   CREATE UNLOGGED SEQUENCE public.synapse_pg_unlogged_seq;
                   SELECT setval('public.synapse_pg_unlogged_seq', 4242);
                   CREATE SEQUENCE public.synapse_pg_logged_seq;`);
        // A write after prepare (Synapse still serving): a sequence's WAL record runs up to 32 values ahead, so
        // the standby's sequence would stand past the old one's.
        between["upgrade-15-to-17-prepare"] = async () => {
            await sql("SELECT nextval('public.synapse_pg_logged_seq') FROM generate_series(1, 3)");
            // Up to 17 the standby lives inside the new PGDATA: prepare again (the configuration carried again,
            // its start check) must not read the standby's data, here a file only root may read.
            const unreadable = "/synapse-pg-new/synapse-pg-standby/synapse_pg_unreadable";
            await runShell(
                `docker exec -u root ${PREFIX}pg17-staging-standby sh -c 'echo x > ${unreadable} && chmod 000 ${unreadable}'`,
                {},
            );
            const prepare = applier.commandRuns.filter((c) => c.name === "upgrade-15-to-17-prepare").pop()!;
            try {
                const again = await runShell(prepare.command, { [PASSWORD_ENV]: PASSWORD });
                assert.match(again.stdout, /^prepare: .*(accepted every setting|nothing to do)/m);
            } finally {
                await runShell(`docker exec -u root ${PREFIX}pg17-staging-standby rm -f ${unreadable}`, {});
            }
        };
        let withUnlogged: ClusterSnapshot;
        between["upgrade-15-to-17-preflight"] = async () => {
            withUnlogged = await snapshotCluster(login);
        };
        const mark = applier.commandRuns.length;
        try {
            await up({ version: "17", upgradeFrom: "15", attempt: "2" });
        } finally {
            delete between["upgrade-15-to-17-prepare"];
            delete between["upgrade-15-to-17-preflight"];
        }
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-prepare"),
            /prepare: the standby "sptest-pgu-pg17-staging-standby" streams from "sptest-pgu-pg15"; the upgrade will link its files, not copy the old data while Synapse is down; 3 unlogged relation\(s\) \(synapse\.synapse_pg_unlogged_empty, synapse\.synapse_pg_unlogged_rows, synapse\.synapse_pg_unlogged_seq\), which a standby holds empty: the upgrade copies what they hold once Synapse has stopped\./,
        );
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-upgrade"),
            /^upgrade: set \d+ sequence\(s\) to the old cluster's positions \(a standby's stand up to 32 values ahead\); unlogged tables, which a standby holds empty: copied 250 row\(s\) of synapse\.synapse_pg_unlogged_rows; 1 empty once writes stopped, nothing to copy\.$/m,
        );
        // The configuration was carried across and accepted before the downtime (by this prepare, or the given-up
        // one whose new cluster it reuses); at the downtime it is in place.
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-prepare"),
            /^prepare: (copied [\w., ]+; the new server accepted every setting|postgresql\.conf, postgresql\.auto\.conf, pg_hba\.conf and pg_ident\.conf already in place; nothing to do\.)/m,
        );
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-copy-config"),
            /^copy-config: postgresql\.conf, postgresql\.auto\.conf, pg_hba\.conf and pg_ident\.conf already in place; nothing to do\.$/m,
        );
        assert.match(
            stdoutOf(mark, "upgrade-15-to-17-upgrade"),
            /upgrade: pg_upgrade --link on the standby of "sptest-pgu-pg15" into "sptest-pgu-pg17-staging" in [\d.]+ s; the old cluster was never stopped and is unchanged\./,
        );
        assert.ok(
            reruns.some((r) =>
                /upgrade-15-to-17-upgrade: upgrade: "sptest-pgu-pg17-staging" already holds the upgraded cluster; nothing to do\./.test(
                    r,
                ),
            ),
            reruns.join("\n"),
        );
        const after = await snapshotCluster(login);
        assert.match(after.version, /^17\./);
        assert.deepEqual(logicalContent(after), logicalContent(withUnlogged!));
        // Up to 17 the standby lived inside the new PGDATA (one mount, so hard links work): it is gone.
        assert.equal(
            (await runShell(`docker exec ${PREFIX}pg17 ls -a /var/lib/postgresql/data`, {})).stdout.includes(
                "synapse-pg-standby",
            ),
            false,
        );
        assert.equal(await containerState(`${PREFIX}pg17-staging-standby`), "absent");
        // Linked files belong to the new cluster only: the old cluster's own files were never shared.
        await up({ version: "15" });
        const reverted = await snapshotCluster(login);
        assert.match(reverted.version, /^15\./);
        assert.deepEqual(logicalContent(reverted), logicalContent(withUnlogged!));
        await sql(
            "DROP TABLE public.synapse_pg_unlogged_rows, public.synapse_pg_unlogged_empty; DROP SEQUENCE public.synapse_pg_unlogged_seq, public.synapse_pg_logged_seq",
        );
    });

    it("a write to the old cluster after the upgrade step: refused over the network (the fence); from inside its container, verify finds it and refuses the switch", async () => {
        let refused: Error | undefined;
        between["upgrade-15-to-17-upgrade"] = async () => {
            refused = await sql("INSERT INTO public.synapse_pg_late_write (id) VALUES (2)").then(
                () => undefined,
                (err: Error) => err,
            );
            await runShell(
                `docker exec ${PREFIX}pg15 psql -U synapse -d synapse -c "INSERT INTO public.synapse_pg_late_write (id) VALUES (1)"`,
                {},
            );
        };
        await sql("CREATE TABLE public.synapse_pg_late_write (id int)");
        try {
            await assert.rejects(up({ version: "17", upgradeFrom: "15", attempt: "3" }), (err: Error) => {
                assert.match(
                    err.message,
                    /synapse-pg verify: verify found 1 difference\(s\) between "sptest-pgu-pg15" and "sptest-pgu-pg17-staging", so the switch will not happen: table synapse\.public\.synapse_pg_late_write: 1 in old, 0 in new\./,
                );
                return true;
            });
        } finally {
            delete between["upgrade-15-to-17-upgrade"];
        }
        assert.match(
            String(refused?.message),
            /ECONNREFUSED|Connection terminated|ECONNRESET/,
            "the published port no longer reached the fenced old cluster",
        );
        assert.equal(await containerState(`${PREFIX}pg15`), "running", "the old cluster serves on");
        assert.deepEqual(
            await sql("SELECT id FROM public.synapse_pg_late_write"),
            [{ id: 1 }],
            "back on its network, it holds the write from inside only",
        );
        await sql("DROP TABLE public.synapse_pg_late_write");
        await up({ version: "15" });
        assert.deepEqual(logicalContent(await snapshotCluster(login)), logicalContent(original));
    });

    it("upgrades 15 -> 17 -> 18 with pg_upgrade: 18's initdb default (data checksums) is matched to the old cluster", async () => {
        await up({ version: "17", upgradeFrom: "15", attempt: "3" });
        await up({ version: "17" });
        // A table made on 17.12 (as Synapse's own migrations make them): every column carries 17.12's internal
        // pg_attver marker, which pg_upgrade's own schema dump carries into 18, which rejects it.
        await sql(
            "CREATE TABLE public.made_on_17 (id bigint PRIMARY KEY, body text); INSERT INTO public.made_on_17 VALUES (1, 'one'), (2, 'two')",
        );
        const on17 = await snapshotCluster(login);
        const mark = applier.commandRuns.length;
        await up({ version: "18", upgradeFrom: "17", attempt: "4" });
        assert.match(
            applier.commandRuns.slice(mark).find((c) => c.name === "upgrade-17-to-18-upgrade")!.stderr,
            /upgrade: cleared PostgreSQL 17\.12's internal pg_attver marker from 2 column\(s\)/,
        );
        assert.deepEqual(commandsRun(mark), [
            "pg18-before-replace",
            "upgrade-17-to-18-prepare",
            "upgrade-17-to-18-preflight",
            "upgrade-17-to-18-upgrade",
            "upgrade-17-to-18-copy-config",
            "upgrade-17-to-18-verify",
            "upgrade-17-to-18-cutover",
            "pg18-serve",
        ]);
        assert.match(
            stdoutOf(mark, "upgrade-17-to-18-upgrade"),
            /upgrade: pg_upgrade --link on the standby of "sptest-pgu-pg17"/,
        );
        const after = await snapshotCluster(login);
        assert.match(after.version, /^18\./);
        assert.deepEqual(logicalContent(after), logicalContent(on17));
        // From 18 the standby lived beside PGDATA, in the volume at /var/lib/postgresql: gone too.
        assert.deepEqual(
            (await runShell(`docker exec ${PREFIX}pg18 ls /var/lib/postgresql`, {})).stdout.trim().split("\n"),
            ["18"],
        );
        assert.deepEqual(
            await sql("SELECT current_setting('data_checksums') AS c, current_setting('data_directory') AS d"),
            [{ c: "off", d: "/var/lib/postgresql/18/docker" }],
        );
        // From 18 pg_upgrade carries the statistics itself.
        const stats = await sql("SELECT count(*)::int AS n FROM pg_stats WHERE schemaname = 'public'");
        assert.ok(stats[0].n > 0, "statistics came across");
    });

    it("a standby that stopped before the downtime is not used: the upgrade copies the old data instead (refused while 17.12's markers are in it), and completes", async () => {
        await up({ version: "17" }); // revert to 17, which pg_upgrade --link never wrote to
        const reverted = await snapshotCluster(login);
        assert.ok(reverted.tables["synapse.public.made_on_17"], "17 still holds the table made on it");
        between["upgrade-17-to-18-prepare"] = async () => {
            await runShell(`docker rm -f ${PREFIX}pg18-staging-standby`, {});
        };
        try {
            // Without a standby, pg_upgrade would read the old data's markers itself: refused before anything stops.
            await assert.rejects(up({ version: "18", upgradeFrom: "17", attempt: "5" }), (err: Error) => {
                assert.match(
                    err.message,
                    /synapse-pg upgrade: 2 column\(s\) of the old cluster carry PostgreSQL 17\.12's internal pg_attver marker, which pg_upgrade's own schema dump carries into the new server, which rejects it; a standby copy is cleared of it, but there is none to use, and the old data is never changed: set postgres:method to directory \(its dump leaves the marker out\) and run pulumi up again\./,
                );
                return true;
            });
            assert.equal(await containerState(`${PREFIX}pg17`), "running", "the old server never stopped");
            assert.deepEqual(logicalContent(await snapshotCluster(login)), logicalContent(reverted));
            await sql("DROP TABLE public.made_on_17");
            assert.deepEqual(logicalContent(await snapshotCluster(login)), logicalContent(original));
            const mark = applier.commandRuns.length;
            await up({ version: "18", upgradeFrom: "17", attempt: "5" });
            assert.match(
                stdoutOf(mark, "upgrade-17-to-18-upgrade"),
                /upgrade: pg_upgrade --copy from "sptest-pgu-pg17" into "sptest-pgu-pg18-staging" in [\d.]+ s; the old cluster is unchanged and running again\./,
            );
        } finally {
            delete between["upgrade-17-to-18-prepare"];
        }
        const after = await snapshotCluster(login);
        assert.match(after.version, /^18\./);
        assert.deepEqual(logicalContent(after), logicalContent(original));
        assert.deepEqual(
            (await runShell(`docker exec ${PREFIX}pg18 ls /var/lib/postgresql`, {})).stdout.trim().split("\n"),
            ["18"],
            "the unused standby's folder went",
        );
    });

    it("the upgrade step killed while pg_upgrade runs, which then finishes on its own: the re-run sees the new cluster is not fresh, makes it again and completes", async () => {
        await up({ version: "17" }); // revert to 17
        const config = { version: "18", upgradeFrom: "17", attempt: "6" };
        const upgradeCommand = (await declare({ ...base, method: "pg_upgrade", ...config }, PASSWORD)).byName(
            "upgrade-17-to-18-upgrade",
        ).inputs.create as string;
        const pgUpgradeContainer = `${PREFIX}pg18-staging-pg-upgrade`;
        let killedWhile = "";
        between["upgrade-17-to-18-preflight"] = async () => {
            // The upgrade step as pulumi up would start it, killed with its whole process group once pg_upgrade runs
            // (a host reboot, an OOM kill, a Ctrl-C of pulumi); the applier then runs the step again.
            const child = spawn("/bin/sh", ["-c", upgradeCommand], {
                cwd: REPO,
                env: { ...process.env, SYNAPSE_PG_PASSWORD: PASSWORD },
                detached: true,
            });
            const exited = new Promise((resolve) => child.on("close", resolve));
            // Bounded: 1500 polls (each a docker inspect of ~20 ms, plus 10 ms) for pg_upgrade's container to run.
            for (let i = 0; i < 1500 && killedWhile === ""; i++) {
                if ((await containerState(pgUpgradeContainer)) === "running") killedWhile = "pg_upgrade running";
                else await new Promise((resolve) => setTimeout(resolve, 10));
            }
            process.kill(-child.pid!, "SIGKILL");
            await exited;
            // pg_upgrade, in its own container, goes on and succeeds (--rm then removes the container): the new
            // cluster is upgraded while its marker still says "prepared", and pg_upgrade left no output folder.
            // Only the started flag tells the re-run that this new cluster is no longer fresh. Bounded: 60 s.
            for (let i = 0; i < 600 && (await containerState(pgUpgradeContainer)) !== "absent"; i++) {
                await new Promise((resolve) => setTimeout(resolve, 100));
            }
        };
        const mark = applier.commandRuns.length;
        try {
            await up(config);
        } finally {
            delete between["upgrade-17-to-18-preflight"];
        }
        assert.equal(killedWhile, "pg_upgrade running", "the step was killed while pg_upgrade ran");
        assert.match(
            stdoutOf(mark, "upgrade-17-to-18-upgrade"),
            /upgrade: pg_upgrade --copy from "sptest-pgu-pg17" into "sptest-pgu-pg18-staging" in [\d.]+ s; the old cluster is unchanged and running again\./,
        );
        assert.equal(await containerState(pgUpgradeContainer), "absent");
        const after = await snapshotCluster(login);
        assert.match(after.version, /^18\./);
        assert.deepEqual(logicalContent(after), logicalContent(original));
        assert.deepEqual(
            (await runShell(`docker exec ${PREFIX}pg18 ls -a /var/lib/postgresql/18/docker`, {})).stdout.includes(
                "synapse-pg-upgrade-started",
            ),
            false,
            "the started flag went with the marker that says the upgrade is complete",
        );
    });
});
