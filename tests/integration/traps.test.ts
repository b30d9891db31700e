// Known upgrade traps, reproduced on real containers, each caught with its message.
// (The pg_attver trap is met by the 17 -> 18 upgrade in lifecycle.test.ts, the removed-parameter trap by fault 7,
// the 18+ layout by lifecycle's 17 -> 18; this file holds the rest.)
import { strict as assert } from "node:assert";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import { waitUntilAccepting } from "../../runner/docker/psql";
import { run } from "../../runner/docker/process";
import { rehashLoginRole } from "../../runner/target/staging";
import { MARKER_FILE } from "../../runner/target/markers";
import { declare } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { connect } from "../fixtures/snapshot";
import { Applier, runShell } from "./applier";
import { containerState, endSuite, startSuite, Suite, TEST_IMAGE } from "./docker-env";
import * as os from "node:os";
import * as path from "node:path";

const PREFIX = "sptest-trap-";
const PASSWORD = "trap-Pässword-4";
const PORT = 25434;

async function containerId(name: string): Promise<string> {
    return (await run("docker", ["inspect", "-f", "{{.Id}}", name])).stdout.trim();
}

async function shmBytes(name: string): Promise<number> {
    return Number((await run("docker", ["inspect", "-f", "{{.HostConfig.ShmSize}}", name])).stdout.trim());
}

/**
 * Database names that libpq reads as a connection string or a tool reads as an option, when passed bare: the first
 * points at a second server on the suite's network, which logs every connection it receives.
 */
const ELSEWHERE = `${PREFIX}elsewhere`;
const TRAP_NAMES = [`host=${ELSEWHERE} dbname=postgres`, "-x", `it's "quoted" \\ naïve ✓`];

/** Connections the second server received over TCP (its own start-up uses the socket). */
async function connectionsElsewhere(): Promise<string[]> {
    const { stdout, stderr } = await run("docker", ["logs", ELSEWHERE]);
    return (stdout + stderr)
        .split("\n")
        .filter((l) => /connection received: host=/.test(l) && !/host=\[local\]/.test(l));
}

async function sql(query: string, database = "synapse"): Promise<any[]> {
    const c = await connect({ port: PORT, user: "synapse", password: PASSWORD }, database);
    try {
        return (await c.query(query)).rows;
    } finally {
        await c.end();
    }
}

describe("upgrade traps on real containers", function () {
    this.timeout(15 * 60 * 1000);
    const applier = new Applier();
    let base: Record<string, string>;
    const up = async (cfg: Record<string, string>) => applier.up(await declare({ ...base, ...cfg }, PASSWORD));
    // The settings the 15 cluster serves with (test 1), and those declared with the upgrade, for 17 only.
    const TUNED_15 = JSON.stringify({ shared_buffers: "192MB", work_mem: "12MB" });
    const TUNED_17 = JSON.stringify({ shared_buffers: "160MB", work_mem: "32MB" });
    const upgrade = { version: "17", upgradeFrom: "15", settings: TUNED_17 };
    let id15: string;
    let events15: number;

    let suite: Suite | undefined;

    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17, 18]);
        base = suite.base;
        await up({ version: "15" });
        await seedSynapse(`${PREFIX}pg15`, "synapse", { sizeMB: 5, seed: 11 });
        events15 = Number((await sql("SELECT count(*) AS n FROM events"))[0].n);
        await run("docker", [
            "run",
            "-d",
            "--name",
            ELSEWHERE,
            "--network",
            `${PREFIX}net`,
            "-e",
            "POSTGRES_PASSWORD=elsewhere",
            `${TEST_IMAGE}:15`,
            "-c",
            "log_connections=on",
        ]);
        for (const name of TRAP_NAMES) {
            await sql(`CREATE DATABASE "${name.replace(/"/g, '""')}"`, "postgres");
            await sql(`CREATE TABLE named (name text); INSERT INTO named VALUES ('${name.replace(/'/g, "''")}')`, name);
        }
    });

    after(() => endSuite(PREFIX, suite));

    it("postgres:settings: a bad value, or one the server cannot start with, is refused before the serving container changes", async () => {
        const before = await containerId(`${PREFIX}pg15`);
        const mark = applier.commandRuns.length;
        await assert.rejects(
            up({ version: "15", settings: JSON.stringify({ work_mem: "lots", shared_buffers: "192MB" }) }),
            (err: Error) => {
                assert.match(
                    err.message,
                    /synapse-pg check-settings: PostgreSQL in "sptest-trap-pg15" refuses postgres:settings: invalid value for parameter "work_mem": "lots"; fix the setting and run pulumi up again \(the running cluster was not changed\)\./,
                );
                return true;
            },
        );
        assert.deepEqual(
            applier.commandRuns.slice(mark).map((r) => r.name),
            [],
            "nothing ran after the refused check",
        );
        await assert.rejects(
            up({ version: "15", settings: JSON.stringify({ wal_level: "minimal" }) }),
            /PostgreSQL would not start with postgres:settings: wal_level is minimal while max_wal_senders is 10; set max_wal_senders to 0 or wal_level to replica \(the running cluster was not changed\)\./,
        );
        // What postgres -C accepts but a start does not: a library to load, SSL without its files. The replacement's
        // server, started for real beside the serving one, refuses them.
        for (const [settings, why] of [
            [
                { shared_preload_libraries: "synapse_pg_no_such_library" },
                'could not access file "synapse_pg_no_such_library": No such file or directory',
            ],
            [{ ssl: "on" }, 'could not load server certificate file "server.crt": No such file or directory'],
        ] as const) {
            await assert.rejects(up({ version: "15", settings: JSON.stringify(settings) }), (err: Error) => {
                assert.ok(
                    err.message.includes(
                        `synapse-pg before-replace: ${TEST_IMAGE}:15 would not start with postgres:settings and the configuration files of "${PREFIX}pg15": ${why}; fix the setting or the file and run pulumi up again (the running cluster was not changed).`,
                    ),
                    err.message,
                );
                return true;
            });
        }
        assert.equal(await containerId(`${PREFIX}pg15`), before, "the serving container was not replaced");
        assert.equal(await containerState(`${PREFIX}pg15`), "running");

        base = { ...base, settings: TUNED_15 };
        await up({ version: "15" });
        assert.notEqual(
            await containerId(`${PREFIX}pg15`),
            before,
            "good settings replace the container, which starts with them",
        );
        assert.deepEqual(
            await sql("SELECT current_setting('shared_buffers') AS sb, current_setting('work_mem') AS wm"),
            [{ sb: "192MB", wm: "12MB" }],
        );
        assert.equal(await shmBytes(`${PREFIX}pg15`), 192 * 1024 * 1024, "/dev/shm follows shared_buffers");
        id15 = await containerId(`${PREFIX}pg15`);
    });

    it("postgres:settings: taking the last setting out reaches the server, as putting them back does", async () => {
        // The provider keeps a container's command and /dev/shm for an absent input: the program declares both.
        const { settings: _tuned, ...untuned } = base;
        await applier.up(await declare({ ...untuned, version: "15" }, PASSWORD));
        assert.deepEqual(
            await sql("SELECT current_setting('shared_buffers') AS sb, current_setting('work_mem') AS wm"),
            [{ sb: "128MB", wm: "4MB" }],
        );
        assert.equal(await shmBytes(`${PREFIX}pg15`), 64 * 1024 * 1024, "Docker's default /dev/shm again");
        await up({ version: "15" });
        assert.deepEqual(
            await sql("SELECT current_setting('shared_buffers') AS sb, current_setting('work_mem') AS wm"),
            [{ sb: "192MB", wm: "12MB" }],
        );
        id15 = await containerId(`${PREFIX}pg15`);
    });

    it("md5 password hashes and access rules: carried; a rule the new server rejects stops the upgrade, named, until dropped with consent", async () => {
        // A cluster first created before PostgreSQL 14: md5 hashes behind an md5 host rule, and a reject rule for the
        // reporting role above it. Then a line the old server's reload turned down (it runs on without it).
        const hba = (edit: string) =>
            run("docker", [
                "exec",
                `${PREFIX}pg15`,
                "sh",
                "-c",
                `${edit} "$PGDATA/pg_hba.conf" && wc -l < "$PGDATA/pg_hba.conf"`,
            ]);
        await hba(
            `sed -i -e 's/^host all all all scram-sha-256$/host all all all md5/' -e '1i host all matrix_reporting all reject'`,
        );
        await run("docker", ["exec", "-i", `${PREFIX}pg15`, "psql", "-q", "-U", "synapse", "-d", "postgres"], {
            stdin: `SELECT pg_reload_conf();\nSET password_encryption = 'md5';\nALTER ROLE synapse PASSWORD '${PASSWORD}';\nALTER ROLE matrix_reporting PASSWORD 'reporting-md5';\n`,
        });
        const reporting = () =>
            connect({ port: PORT, user: "matrix_reporting", password: "reporting-md5" }, "synapse").then((c) =>
                c.end(),
            );
        await assert.rejects(
            reporting(),
            /pg_hba\.conf rejects connection for host "[^"]+", user "matrix_reporting", database "synapse"/,
            "15 rejects the role",
        );
        const badLine = Number((await hba(`echo 'host all all 10.0.0.0/33 scram-sha-256' >>`)).stdout.trim());
        await sql("SELECT pg_reload_conf()");

        const mark = applier.commandRuns.length;
        await assert.rejects(up(upgrade), (err: Error) => {
            assert.match(
                err.message,
                new RegExp(
                    `synapse-pg copy-config: The new PostgreSQL rejects 1 access rule\\(s\\) of the old configuration, so the upgrade stops before the switch: pg_hba\\.conf line ${badLine}: "host all all 10\\.0\\.0\\.0/33 scram-sha-256" \\(invalid CIDR mask in address "10\\.0\\.0\\.0/33"\\)\\.`,
                ),
            );
            assert.ok(
                err.message.includes(
                    `or leave them out of the new cluster only with \`pulumi config set postgres:dropAccessRules pg_hba.conf:${badLine}\`, and run pulumi up again.`,
                ),
                err.message,
            );
            return true;
        });
        assert.equal(await containerState(`${PREFIX}pg15`), "running", "refused before the switch: 15 serves");
        await up({ ...upgrade, dropAccessRules: `pg_hba.conf:${badLine}` });
        const runs = applier.commandRuns.slice(mark);
        const preflight = runs.find((r) => r.name === "upgrade-15-to-17-preflight")!.stdout;
        assert.match(preflight, /preflight: warning: matrix_reporting, synapse have an md5 password hash/);
        const copy = runs.filter((r) => r.name === "upgrade-15-to-17-copy-config").pop()!.stdout;
        assert.ok(
            copy.includes(
                `copy-config: left out of the new cluster, as postgres:dropAccessRules allows: pg_hba.conf line ${badLine}: "host all all 10.0.0.0/33 scram-sha-256" (invalid CIDR mask`,
            ),
            copy,
        );
        const restore = runs.find((r) => r.name === "upgrade-15-to-17-restore")!.stdout;
        assert.match(
            restore,
            /restore: the role synapse had an md5 password hash; it was re-set as scram-sha-256 from the configured password\./,
        );
        const rows = await sql(
            "SELECT current_setting('server_version_num')::int / 10000 AS major, (SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'synapse') AS hash",
        );
        assert.deepEqual(
            rows,
            [{ major: 17, hash: "SCRAM-SHA-256$" }],
            "Synapse logs in over TCP with its password, hashed as scram",
        );
        await assert.rejects(
            reporting(),
            /pg_hba\.conf rejects connection for host "[^"]+", user "matrix_reporting", database "synapse"/,
            "17 still rejects the role",
        );
        const rules = (
            await run("docker", ["exec", `${PREFIX}pg17`, "sh", "-c", `grep -v '^#' "$PGDATA/pg_hba.conf" | grep .`])
        ).stdout;
        assert.match(
            rules,
            /^host all matrix_reporting all reject\nlocal/,
            "the reject rule is first, as in the old cluster",
        );
        assert.match(rules, /^host all all all md5$/m, "the old cluster's own host rule, not the image's");
        // The old cluster could not start again with that line (a revert follows): the user fixes it, as told.
        await run("docker", [
            "run",
            "--rm",
            "--user",
            "postgres",
            "-v",
            `${PREFIX}pgsql15:/data`,
            "--entrypoint",
            "sed",
            `${TEST_IMAGE}:15`,
            "-i",
            `${badLine}d`,
            "/data/pg_hba.conf",
        ]);
    });

    it("database names that read as a connection string or an option are dumped, restored and verified as names; no connection leaves", async () => {
        for (const name of TRAP_NAMES) {
            assert.deepEqual(
                await sql("SELECT current_setting('server_version_num')::int / 10000 AS major, name FROM named", name),
                [{ major: 17, name }],
                name,
            );
        }
        const verify = applier.commandRuns.find((r) => r.name === "upgrade-15-to-17-verify")!.stdout;
        for (const name of TRAP_NAMES) {
            const line = verify.split("\n").find((l) => l.startsWith(`table ${name}.public.named `));
            assert.match(line ?? "(no line)", /\s1\s+1\s+same$/, `verify compared ${name}`);
        }
        assert.deepEqual(await connectionsElsewhere(), [], "no step connected to the server a database name points at");
    });

    it("postgres:settings declared with the upgrade go to the new cluster only; the old container runs on as it was", async () => {
        assert.deepEqual(
            await sql("SELECT current_setting('shared_buffers') AS sb, current_setting('work_mem') AS wm"),
            [{ sb: "160MB", wm: "32MB" }],
        );
        assert.equal(await shmBytes(`${PREFIX}pg17`), 160 * 1024 * 1024);
        assert.equal(
            await containerId(`${PREFIX}pg15`),
            id15,
            "the old container was not recreated for the new settings",
        );
        const copy = applier.commandRuns.find((r) => r.name === "upgrade-15-to-17-copy-config")!.stdout;
        assert.match(
            copy,
            /copy-config: the new server accepts postgres:settings \(shared_buffers=160MB, work_mem=32MB\); its container starts with them after the switch\./,
        );
        assert.match(
            copy,
            /^copy-config: the server the switch will create \(the new image, this configuration, postgres:settings\) started and stopped cleanly in a throw-away container\.$/m,
        );
    });

    it("a revert after Synapse wrote to the new cluster says how many events it would lose and needs a confirmation", async () => {
        // Synapse wrote three events and claimed one-time keys on 17.
        await sql(`INSERT INTO events (topological_ordering, event_id, type, room_id, processed, outlier, stream_ordering)
                   SELECT 1, '$late' || g, 'm.room.message', '!room1:example.org', true, false, 1000000 + g FROM generate_series(1, 3) g`);
        await assert.rejects(up({ version: "15" }), (err: Error) => {
            assert.match(
                err.message,
                /synapse-pg serve: Going back to "sptest-trap-pg15" would lose 3 event\(s\) written to "sptest-trap-pg17" since the switch at \S+; to accept that, set postgres:revertAcceptLoss 3 and run pulumi up again \(those events stay in "sptest-trap-pg17", which is kept\)\./,
            );
            return true;
        });
        assert.equal(await containerState(`${PREFIX}pg17`), "running", "refused: 17 keeps serving");
        assert.equal(await containerState(`${PREFIX}pg15`), "stopped", "refused: 15 does not answer beside 17");
        assert.equal((await sql("SELECT current_setting('server_version_num')::int / 10000 AS major"))[0].major, 17);

        const mark = applier.commandRuns.length;
        await up({ version: "15", revertAcceptLoss: "3" });
        const serve = applier.commandRuns.slice(mark).find((r) => r.name === "pg15-serve")!.stdout;
        assert.match(
            serve,
            /serve: reverted; 3 event\(s\) written since the switch stay only in the newer cluster; cleared \d+ one-time keys/,
        );
        const rows = await sql(
            "SELECT current_setting('server_version_num')::int / 10000 AS major, (SELECT count(*) FROM events)::int AS events, (SELECT count(*) FROM e2e_one_time_keys_json)::int AS otks",
        );
        assert.deepEqual(
            rows,
            [{ major: 15, events: events15, otks: 0 }],
            "15 serves its own events, with one-time keys cleared",
        );
    });

    it("an adopted 18 container whose volume is mounted the pre-18 way is refused before anything runs", async () => {
        await run(
            "docker",
            [
                "run",
                "-d",
                "--name",
                `${PREFIX}wrong18`,
                "--network",
                `${PREFIX}net`,
                "-e",
                "POSTGRES_PASSWORD",
                "-v",
                `${PREFIX}wrong18:/var/lib/postgresql/data`,
                `${TEST_IMAGE}:18`,
            ],
            { env: { POSTGRES_PASSWORD: PASSWORD } },
        );
        await new Promise((r) => setTimeout(r, 4000));
        await assert.rejects(
            runShell(`npx --no-install synapse-pg inspect --container ${PREFIX}wrong18`, {}),
            /synapse-pg inspect: "sptest-trap-wrong18" keeps its data at PGDATA=\/var\/lib\/postgresql\/18\/docker, outside what is mounted \(\/var\/lib\/postgresql\/data\): the real data is in an anonymous volume/,
        );
    });

    it("a revert that would run another image than the one that wrote the old data is refused, naming the image to pin", async () => {
        // Upgrade again (the reverted 17 data is set aside), then revert with an image template whose 15 is another
        // build: Docker replaces the 15 container with it, created stopped, with the port 17 still publishes.
        await up({ ...upgrade, attempt: "2" });
        const pinned = (await run("docker", ["inspect", "-f", "{{.Image}}", `${PREFIX}pg15`])).stdout.trim();
        await run("docker", ["build", "-q", "-t", `${PREFIX}other/postgres:15`, "-"], {
            stdin: `FROM ${TEST_IMAGE}:15\nLABEL rebuilt=yes\n`,
        });
        await assert.rejects(
            applier.up(await declare({ ...base, version: "15", image: `${PREFIX}other/postgres:{version}` }, PASSWORD)),
            (err: Error) => {
                assert.ok(
                    err.message.includes(
                        `synapse-pg serve: The revert to "${PREFIX}pg15" would run image ${PREFIX}other/postgres:15 (`,
                    ),
                    err.message,
                );
                assert.ok(
                    err.message.includes(
                        `not the image that wrote its data before the upgrade (${pinned}); set postgres:image to ${pinned} and run pulumi up again.`,
                    ),
                    err.message,
                );
                return true;
            },
        );
        assert.equal(await containerState(`${PREFIX}pg15`), "stopped", "the wrong image does not serve");
        assert.equal(await containerState(`${PREFIX}pg17`), "running", "17 keeps serving");
        assert.equal((await sql("SELECT current_setting('server_version_num')::int / 10000 AS major"))[0].major, 17);
    });

    it("a revert while the newer cluster is stopped counts its events offline; one it cannot count is refused until accepted as any", async () => {
        // 17 serves (the wrong-image revert above was refused). Synapse writes two events; then 17 is stopped.
        await sql(`INSERT INTO events (topological_ordering, event_id, type, room_id, processed, outlier, stream_ordering)
                   SELECT 1, '$stopped' || g, 'm.room.message', '!room1:example.org', true, false, 2000000 + g FROM generate_series(1, 2) g`);
        await run("docker", ["stop", `${PREFIX}pg17`]);
        await assert.rejects(
            up({ version: "15" }),
            /synapse-pg serve: Going back to "sptest-trap-pg15" would lose 2 event\(s\) written to "sptest-trap-pg17" since the switch at \S+;/,
        );
        assert.equal(await containerState(`${PREFIX}pg15`), "stopped", "refused: 15 does not serve");
        assert.equal(await containerState(`${PREFIX}pg17`), "stopped", "17 stays as it was left");
        assert.equal(await containerState(`${PREFIX}pg17-count`), "absent", "the counting container is gone");

        // A marker that cannot be read is no reason to think nothing was lost.
        const marker = path.join(await fs.mkdtemp(path.join(os.tmpdir(), `${PREFIX}marker-`)), "marker.json");
        await fs.writeFile(marker, "{ torn");
        await run("docker", ["cp", marker, `${PREFIX}pg17:/var/lib/postgresql/data/${MARKER_FILE}`]);
        await assert.rejects(
            up({ version: "15" }),
            /synapse-pg serve: Going back to "sptest-trap-pg15" cannot be checked for lost writes: "sptest-trap-pg17" served Synapse after an upgrade, but its upgrade marker cannot be read \([^)]+\); start it so its events can be counted, or, to go back whatever it holds, set postgres:revertAcceptLoss any and run pulumi up again \(its data is kept\)\./,
        );
        assert.equal(await containerState(`${PREFIX}pg15`), "stopped", "refused: 15 does not serve");

        const mark = applier.commandRuns.length;
        await up({ version: "15", revertAcceptLoss: "any" });
        const serve = applier.commandRuns.slice(mark).find((r) => r.name === "pg15-serve")!.stdout;
        assert.match(
            serve,
            /serve: reverted; an uncounted number of event\(s\) written since the switch stay only in the newer cluster; cleared \d+ one-time keys/,
        );
        const rows = await sql(
            "SELECT current_setting('server_version_num')::int / 10000 AS major, (SELECT count(*) FROM events)::int AS events",
        );
        assert.deepEqual(rows, [{ major: 15, events: events15 }]);
        await fs.rm(path.dirname(marker), { recursive: true, force: true });
    });

    it("the md5-to-scram re-set sends a verifier: a server that logs every statement never logs the password", async () => {
        const logged = `${PREFIX}logged`;
        await run(
            "docker",
            [
                "run",
                "-d",
                "--name",
                logged,
                "--network",
                `${PREFIX}net`,
                "-e",
                "POSTGRES_USER=synapse",
                "-e",
                "POSTGRES_PASSWORD",
                `${TEST_IMAGE}:17`,
                "-c",
                "log_statement=all",
            ],
            { env: { POSTGRES_PASSWORD: PASSWORD } },
        );
        await waitUntilAccepting(logged, "synapse");
        const md5 =
            "md5" +
            createHash("md5")
                .update(PASSWORD + "synapse")
                .digest("hex");
        await run("docker", [
            "exec",
            logged,
            "psql",
            "-q",
            "-U",
            "synapse",
            "-d",
            "postgres",
            "-c",
            `ALTER ROLE synapse PASSWORD '${md5}'`,
        ]);
        assert.equal(await rehashLoginRole({ container: logged, password: PASSWORD }, "synapse"), "synapse");
        // Docker's log lags the server by a moment: wait (bounded) for the statement to show.
        let log = "";
        for (let i = 0; i < 50 && !/ALTER USER/.test(log); i++, await new Promise((r) => setTimeout(r, 100)))
            log = (await run("docker", ["logs", logged])).stderr;
        assert.match(
            log,
            /statement: ALTER USER "?synapse"? PASSWORD 'SCRAM-SHA-256\$4096:/,
            "the server logged the statement, with a verifier",
        );
        assert.ok(!log.includes(PASSWORD), "the password is not in the server's log");
        const ip = (
            await run("docker", ["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", logged])
        ).stdout.trim();
        const login = await run(
            "docker",
            [
                "exec",
                "-e",
                "PGPASSWORD",
                logged,
                "psql",
                "-X",
                "-h",
                ip,
                "-U",
                "synapse",
                "-d",
                "postgres",
                "-Atc",
                "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'synapse'",
            ],
            { env: { PGPASSWORD: PASSWORD } },
        );
        assert.equal(login.stdout.trim(), "t", "the password logs in over TCP against the new scram hash");
    });
});
