// Config changes on a serving stack, on real containers: each does what it says, or is refused before anything
// changes. A changed postgres:password really logs in (and the old one no longer does); postgres:dataRoot set on a
// stack whose cluster has data is refused, with the server serving on; a postgres:backupDir that does not exist
// yet is created (0700) and the upgrade completes into it; an old cluster that archives WAL has copies that do
// not. Settings (set, changed, removed) are in traps.test.ts.
import { strict as assert } from "node:assert";
import { promises as fs } from "node:fs";
import { ProcessError, run } from "../../runner/docker/process";
import { declare } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { connect, logicalContent, snapshotCluster } from "../fixtures/snapshot";
import { Applier, runShell } from "./applier";
import { containerState, endSuite, startSuite, Suite, TEST_IMAGE, volumesNamed } from "./docker-env";
import * as os from "node:os";
import * as path from "node:path";

const PREFIX = "sptest-cfg-";
const PORT = 25439;
const OLD = `${PREFIX}pg15`;
const FIRST_PASSWORD = "config-Pässword-1";
const SECOND_PASSWORD = "config-Pässword-2 with spaces";

describe("config changes on a serving stack: done for real, or refused before anything changes", function () {
    this.timeout(15 * 60 * 1000);
    let suite: Suite | undefined;
    let base: Record<string, string>;
    let password = FIRST_PASSWORD;
    let scratch: string;
    let afterStep: (name: string) => Promise<void> = async () => undefined;
    const applier = new Applier((r) => afterStep(r.name));
    const up = async (cfg: Record<string, string>) => applier.up(await declare({ ...base, ...cfg }, password));
    const loginWith = async (pw: string) => {
        const c = await connect({ port: PORT, user: "synapse", password: pw }, "synapse");
        try {
            return (await c.query("SELECT current_setting('server_version_num')::int / 10000 AS v")).rows[0]
                .v as number;
        } finally {
            await c.end();
        }
    };
    const containerId = async (name: string) => (await run("docker", ["inspect", "-f", "{{.Id}}", name])).stdout.trim();
    const show = async (container: string, setting: string, socket: string[] = []) =>
        (
            await run("docker", [
                "exec",
                "-u",
                "postgres",
                container,
                "psql",
                ...socket,
                "-U",
                "synapse",
                "-d",
                "postgres",
                "-XAtc",
                `SHOW ${setting}`,
            ])
        ).stdout.trim();
    const untilAccepting = async () => {
        for (
            let i = 0;
            i < 60 &&
            (await loginWith(password).then(
                () => false,
                () => true,
            ));
            i++
        )
            await new Promise((r) => setTimeout(r, 500));
    };

    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17]);
        base = suite.base;
        scratch = await fs.mkdtemp(path.join(os.tmpdir(), `${PREFIX}scratch-`));
        await up({ version: "15" });
        await seedSynapse(OLD, "synapse", { sizeMB: 4, seed: 9 });
    });
    after(async () => {
        await endSuite(PREFIX, suite);
        if (scratch) await fs.rm(scratch, { recursive: true, force: true });
    });

    it("postgres:password changed: the new password logs in over TCP and the old one is refused", async () => {
        const mark = applier.commandRuns.length;
        password = SECOND_PASSWORD;
        await up({ version: "15" });
        const before = applier.commandRuns.slice(mark).find((c) => c.name === "pg15-before-replace")!.stdout;
        assert.match(
            before,
            /^before-replace: "sptest-cfg-pg15" will be replaced \(its password changes\); Synapse was not running here\.$/m,
        );
        const serve = applier.commandRuns.slice(mark).find((c) => c.name === "pg15-serve")!.stdout;
        assert.match(
            serve,
            /^serve: the role synapse did not log in with postgres:password; its password was set to it \(as a scram-sha-256 verifier\), and it logs in over TCP now\.$/m,
        );
        assert.equal(await loginWith(SECOND_PASSWORD), 15);
        await assert.rejects(loginWith(FIRST_PASSWORD), /password authentication failed for user "synapse"/);
        // Again, unchanged: nothing runs, nothing is set.
        const again = applier.commandRuns.length;
        await up({ version: "15" });
        assert.deepEqual(
            applier.commandRuns.slice(again).map((c) => c.name),
            [],
        );
    });

    it("postgres:port changed: before-replace sees the replacement coming; the server answers on the new port only", async () => {
        const mark = applier.commandRuns.length;
        await up({ version: "15", port: String(PORT + 100) });
        assert.match(
            applier.commandRuns.slice(mark).find((c) => c.name === "pg15-before-replace")!.stdout,
            /will be replaced \(its published port changes\)/,
        );
        const c = await connect({ port: PORT + 100, user: "synapse", password }, "synapse");
        await c.end();
        await assert.rejects(loginWith(password), /ECONNREFUSED/);
        await up({ version: "15" });
        assert.equal(await loginWith(password), 15);
    });

    it("postgres:hostAlias changed: the container is replaced and answers to the new name only on the network", async () => {
        const mark = applier.commandRuns.length;
        const ready = (host: string) =>
            run("docker", [
                "run",
                "--rm",
                "--network",
                `${PREFIX}net`,
                "--entrypoint",
                "pg_isready",
                `${TEST_IMAGE}:15`,
                "-h",
                host,
                "-t",
                "5",
            ]).then(
                () => true,
                () => false,
            );
        await up({ version: "15", hostAlias: "matrix-db" });
        assert.match(
            applier.commandRuns.slice(mark).find((c) => c.name === "pg15-before-replace")!.stdout,
            /will be replaced \(its network or host name changes\)/,
        );
        assert.deepEqual([await ready("matrix-db"), await ready("db")], [true, false]);
        await up({ version: "15" });
        assert.deepEqual([await ready("matrix-db"), await ready("db")], [false, true]);
        assert.equal(await loginWith(password), 15);
    });

    it("postgres:user or postgres:containerPrefix changed on a cluster with data: refused before anything changes", async () => {
        const id = await containerId(OLD);
        await assert.rejects(up({ version: "15", user: "matrix" }), (err: Error) => {
            assert.ok(
                err.message.includes(
                    `synapse-pg before-replace: postgres:user changes from synapse to matrix, but the image applies it only to an empty data folder, so "${OLD}" would keep synapse; set postgres:user back, or create the role matrix yourself (psql) and then change postgres:user.`,
                ),
                err.message,
            );
            return true;
        });
        await assert.rejects(up({ version: "15", containerPrefix: `${PREFIX}db` }), (err: Error) => {
            assert.ok(
                err.message.includes(
                    `synapse-pg before-replace: "${OLD}" already serves PostgreSQL 15 as "db" on "${PREFIX}net"; a new name (postgres:containerPrefix) would start "${PREFIX}db15" beside it on other, empty data; set postgres:containerPrefix back.`,
                ),
                err.message,
            );
            return true;
        });
        assert.equal(await containerId(OLD), id, "the serving container was not replaced");
        assert.equal(await loginWith(password), 15);
        await up({ version: "15" });
    });

    it("postgres:dataRoot set on a serving stack: refused before anything changes; the cluster serves on from its volume", async () => {
        const before = await snapshotCluster({ port: PORT, user: "synapse", password });
        const id = await containerId(OLD);
        const root = path.join(scratch, "data");
        await assert.rejects(up({ version: "15", dataRoot: root }), (err: Error) => {
            assert.ok(
                err.message.includes(
                    `synapse-pg before-replace: postgres:dataRoot would move "${OLD}" from ${PREFIX}pgsql15 to ${root}/pgsql15, which is empty: the new container would serve an empty database and Synapse would start a fresh one there; to move the data, stop "${OLD}", copy its data there yourself (keep the original) and run pulumi up again, or set postgres:dataRoot back.`,
                ),
                err.message,
            );
            return true;
        });
        assert.equal(await containerId(OLD), id, "the serving container was not replaced");
        assert.equal(await containerState(OLD), "running");
        assert.deepEqual(
            logicalContent(await snapshotCluster({ port: PORT, user: "synapse", password })),
            logicalContent(before),
            "it serves the same data",
        );
        await assert.rejects(fs.stat(path.join(root, "pgsql15")), /ENOENT/, "the new location was not created");
        // Set back, the stack is as it was.
        await up({ version: "15" });
        assert.equal(await containerId(OLD), id);
    });

    it("a Docker engine on another machine that cannot be reached (DOCKER_HOST): every step fails in one sentence before it runs; nothing changes, Synapse is not stopped", async () => {
        const synapse = `${PREFIX}synapse`;
        await run("docker", ["run", "-d", "--name", synapse, "--entrypoint", "sleep", `${TEST_IMAGE}:15`, "600"]);
        try {
            const id = await containerId(OLD);
            const backupDir = path.join(scratch, "remote-backups");
            const remote = { DOCKER_HOST: "ssh://admin@127.0.0.1:1" };
            for (const [step, ...flags] of [
                ["dump", "--old", OLD, "--backup-dir", backupDir, "--synapse", synapse],
                ["preflight", "--old", OLD, "--backup-dir", backupDir, "--synapse", synapse],
                ["serve", "--container", OLD, "--network", `${PREFIX}net`, "--alias", "db"],
            ]) {
                await assert.rejects(
                    run("./bin/synapse-pg", [step, ...flags], { env: remote }),
                    (err: ProcessError) => {
                        assert.equal(
                            err.stderrTail,
                            `synapse-pg ${step}: The Docker engine at ssh://admin@127.0.0.1:1 cannot be reached, so nothing was run: ssh: connect to host 127.0.0.1 port 1: Connection refused`,
                        );
                        return true;
                    },
                );
            }
            assert.equal(await containerState(synapse), "running", "Synapse was not stopped");
            assert.equal(await containerId(OLD), id);
            assert.equal(await containerState(OLD), "running");
            await assert.rejects(fs.stat(backupDir), /ENOENT/, "no backup folder was made");
        } finally {
            await run("docker", ["rm", "-f", synapse]);
        }
    });

    it("WAL archiving on in the old cluster: the standby and the staging copy archive nothing; the output says the new cluster archives after the switch", async () => {
        const archive = "/var/lib/postgresql/archive";
        await run("docker", ["exec", "-u", "postgres", OLD, "mkdir", "-p", archive]);
        await run("docker", [
            "exec",
            OLD,
            "psql",
            "-U",
            "synapse",
            "-d",
            "postgres",
            "-c",
            "ALTER SYSTEM SET archive_mode = on",
            "-c",
            `ALTER SYSTEM SET archive_command = 'test ! -f ${archive}/%f && cp %p ${archive}/%f'`,
        ]);
        await run("docker", ["restart", OLD]);
        await untilAccepting();
        assert.equal(await show(OLD, "archive_mode"), "on");
        const seen: Record<string, string> = {};
        afterStep = async (name) => {
            if (name.endsWith("-prepare"))
                seen.standby = await show(`${PREFIX}pg17-staging-standby`, "archive_mode", ["-h", "/tmp"]);
            if (name.endsWith("-copy-config")) seen.staging = await show(`${PREFIX}pg17-staging`, "archive_mode");
        };
        const mark = applier.commandRuns.length;
        try {
            await up({ version: "17", upgradeFrom: "15", method: "pg_upgrade" });
        } finally {
            afterStep = async () => undefined;
        }
        assert.deepEqual(seen, { standby: "off", staging: "off" }, "no copy of the old cluster archived");
        assert.match(
            applier.commandRuns.slice(mark).find((c) => c.name === "upgrade-15-to-17-prepare")!.stdout,
            /^prepare: the old cluster archives WAL \(archive_mode=on\); the copies made for the upgrade archive nothing, but after the switch the new cluster archives with the same archive_command: a new major needs an archive of its own \(a new pgBackRest stanza, another folder\), so point it elsewhere with postgres:settings before the switch\.$/m,
        );
        assert.match(
            applier.commandRuns.slice(mark).find((c) => c.name === "upgrade-15-to-17-upgrade")!.stdout,
            /pg_upgrade --link on the standby/,
        );
        assert.equal(
            await show(`${PREFIX}pg17`, "archive_mode"),
            "on",
            "serving, 17 archives as the old cluster's files say",
        );
        // Back to 15, and 17's data out of the way, for the next test's dump.
        await up({ version: "15" });
        for (const v of [`${PREFIX}pgsql17`]) await run("docker", ["volume", "rm", "-f", v]);
        applier.state.delete("pg17-data");
    });

    it("postgres:password changed together with an upgrade: preflight refuses before the downtime, saying how to change it; the old cluster serves on", async () => {
        const declared = password;
        password = "config-Pässword-3";
        try {
            await assert.rejects(up({ version: "17", upgradeFrom: "15" }), (err: Error) => {
                assert.ok(
                    err.message.includes(
                        `synapse-pg preflight: postgres:password does not log in to "${OLD}" as synapse (password authentication failed), and the new cluster gets the old one's password hashes, so Synapse could not log in after the switch either: if it is mistyped, set the password Synapse uses; to change it, do so before the upgrade (set postgres:version back to 15 and pulumi up, which sets it) or after it.`,
                    ),
                    err.message,
                );
                return true;
            });
        } finally {
            password = declared;
        }
        assert.equal(await loginWith(password), 15, "15 serves on with the password it had");
    });

    it("postgres:dataRoot changed half-way through an upgrade: cutover refuses before anything changes (it would switch to an empty folder); set back, the upgrade completes where it began", async () => {
        const before = await snapshotCluster({ port: PORT, user: "synapse", password });
        afterStep = async (name) => {
            if (name === "upgrade-15-to-17-restore") throw new Error("stopped after the restore");
        };
        try {
            await assert.rejects(up({ version: "17", upgradeFrom: "15" }), /stopped after the restore/);
        } finally {
            afterStep = async () => undefined;
        }
        const root = path.join(scratch, "elsewhere");
        await assert.rejects(up({ version: "17", upgradeFrom: "15", dataRoot: root }), (err: Error) => {
            assert.ok(
                err.message.includes(
                    `synapse-pg cutover: The upgrade under way keeps its new cluster at ${PREFIX}pgsql17 ("${PREFIX}pg17-staging"), but postgres:dataRoot now puts it at ${root}/pgsql17: set postgres:dataRoot back and run pulumi up again, and change it once the upgrade is done (nothing was changed).`,
                ),
                err.message,
            );
            return true;
        });
        assert.equal(await containerState(`${PREFIX}pg17`), "absent", "no new cluster was created");
        assert.equal(await loginWith(password), 15, "15 serves on");
        // A changed postgres:containerPrefix names another staging container (and data location) in the steps
        // that have not run: the step refuses while the upgrade's own staging copy exists. Run as the command the
        // changed stack declares, since the old container keeps its name (ignoreChanges) only in the real engine.
        const changed = await declare(
            { ...base, version: "17", upgradeFrom: "15", containerPrefix: `${PREFIX}db` },
            password,
        );
        const renamed = (changed.byName("upgrade-15-to-17-cutover").inputs.create as string).replace(
            `--old ${PREFIX}db15`,
            `--old ${OLD}`,
        );
        assert.match(renamed, new RegExp(`--new ${PREFIX}db17-staging --data ${PREFIX}dbsql17 `));
        await assert.rejects(runShell(renamed, {}), (err: Error) => {
            assert.ok(
                err.message.includes(
                    `synapse-pg cutover: An upgrade of "${OLD}" is already under way in "${PREFIX}pg17-staging", begun with another postgres:containerPrefix or postgres:dataRoot: set them back and run pulumi up again; to give that upgrade up instead, remove "${PREFIX}pg17-staging" (docker rm -f; its data stays) and run pulumi up again (nothing was changed).`,
                ),
                err.message,
            );
            return true;
        });
        assert.equal(await containerState(OLD), "running", "the old cluster serves on");
        await up({ version: "17", upgradeFrom: "15" });
        const after = await snapshotCluster({ port: PORT, user: "synapse", password });
        assert.match(after.version, /^17\./);
        assert.deepEqual(logicalContent(after), logicalContent(before));
        await assert.rejects(fs.stat(path.join(root, "pgsql17")), /ENOENT/, "the other folder was never made");
        // Back to 15 with no 17 data, as the next test expects.
        await up({ version: "15" });
        for (const v of await volumesNamed(`${PREFIX}pgsql17`)) await run("docker", ["volume", "rm", "-f", v]);
        applier.state.delete("pg17-data");
    });

    it("postgres:backupDir changed with a new attempt after a dump: the new attempt's steps run with the new folder (created, 0700); the first dump stays", async () => {
        // Attempt 1 dumps into the suite's folder, then stops (as a failure after the dump would).
        afterStep = async (name) => {
            if (name === "upgrade-15-to-17-dump") throw new Error("stopped after the dump");
        };
        try {
            await assert.rejects(up({ version: "17", upgradeFrom: "15" }), /stopped after the dump/);
        } finally {
            afterStep = async () => undefined;
        }
        const first = (await fs.readdir(base.backupDir)).sort();
        assert.ok(first.includes("upgrade-15-to-17.json"), "attempt 1 dumped into the first folder");
        // Attempt 2, with a folder that does not exist yet: every step runs with the config as it is now.
        const backups = path.join(scratch, "not", "yet", "backups");
        const mark = applier.commandRuns.length;
        await up({ version: "17", upgradeFrom: "15", backupDir: backups, attempt: "2" });
        const runs = applier.commandRuns.slice(mark);
        const preflight = runs.find((c) => c.name === "upgrade-15-to-17-preflight")!.stdout;
        assert.match(
            preflight,
            new RegExp(
                `^preflight: created the backup folder ${backups} \\(mode 0700: the dump holds every role's password hash\\)\\.$`,
                "m",
            ),
        );
        assert.ok(
            runs.find((c) => c.name === "upgrade-15-to-17-dump")!.command.includes(`--backup-dir ${backups} `),
            "attempt 2 dumps into the new folder",
        );
        assert.equal((await fs.stat(backups)).mode & 0o777, 0o700);
        assert.ok((await fs.readdir(backups)).includes("upgrade-15-to-17.json"), "the dump's manifest is there");
        assert.deepEqual((await fs.readdir(base.backupDir)).sort(), first, "attempt 1's dump is left as it was");
        assert.equal(await loginWith(password), 17, "17 serves, and the changed password logs in to it");
    });
});
