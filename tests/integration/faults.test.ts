// Faults against real containers. Each one ends with the old cluster serving its unchanged data (compared with
// the tests' own snapshot) and a re-run that completes the upgrade; between faults the stack is reverted, so each
// starts from 15 serving. Every wait is bounded; everything created is removed at the end.
import { strict as assert } from "node:assert";
import { spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import { copyFileOut } from "../../runner/docker/files";
import { advanceMarker, readMarkerIn, writeMarkerIn } from "../../runner/target/markers";
import { run } from "../../runner/docker/process";
import { declare, Declared } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { ClusterSnapshot, connect, logicalContent, snapshotCluster } from "../fixtures/snapshot";
import { Applier, REPO, runShell } from "./applier";
import { containerState, endSuite, startSuite, Suite, volumesNamed } from "./docker-env";
import * as os from "node:os";
import * as path from "node:path";

const PREFIX = "sptest-fault-";
const PASSWORD = "fault-Pässword-2";
const PORT = 25433;
const OLD = `${PREFIX}pg15`;
const STAGING = `${PREFIX}pg17-staging`;

/** Stops dockerd as a host shutdown or a package upgrade does (its containers stopped with their stop signal) and starts it again. */
async function restartDockerDaemon(): Promise<void> {
    const pid = (await fs.readFile("/var/run/docker.pid", "utf8")).trim();
    process.kill(Number(pid), "SIGTERM");
    for (
        let i = 0;
        i < 120 &&
        (await fs.stat(`/proc/${pid}`).then(
            () => true,
            () => false,
        ));
        i++
    )
        await new Promise((r) => setTimeout(r, 500));
    await run("bash", [path.join(REPO, "scripts/docker-up.sh")]);
    // Containers with a restart policy come back shortly after the daemon answers.
    for (let i = 0; i < 60 && (await containerState(OLD)) !== "running"; i++)
        await new Promise((r) => setTimeout(r, 500));
}

describe("faults: the old data always survives, and a re-run completes", function () {
    this.timeout(20 * 60 * 1000);
    const login = { port: PORT, user: "synapse", password: PASSWORD };
    let applier: Applier;
    let backups: string;
    let base: Record<string, string>;
    let original: ClusterSnapshot;
    /** Run by the applier after each step that succeeded: a fault made at a step boundary. */
    let afterStep: (name: string) => Promise<void> = async () => undefined;

    const config = (extra: Record<string, string> = {}) => ({ ...base, ...extra });
    const upgrade = (extra: Record<string, string> = {}) => config({ version: "17", upgradeFrom: "15", ...extra });
    const up = async (cfg: Record<string, string>) => applier.up(await declare(cfg, PASSWORD));
    /** The exact command a step resource runs, with its environment. */
    const stepOf = (d: Declared, step: string) => {
        const r = d.byName(`upgrade-15-to-17-${step}`);
        return { command: r.inputs.create as string, env: { SYNAPSE_PG_PASSWORD: PASSWORD } };
    };

    async function expectOldServingUnchanged(): Promise<void> {
        assert.equal(await containerState(OLD), "running", "the old cluster still runs");
        const now = await snapshotCluster(login);
        assert.match(now.version, /^15\./);
        assert.deepEqual(logicalContent(now), logicalContent(original));
    }

    async function expectUpgradeCompletes(cfg: Record<string, string>): Promise<void> {
        await up(cfg);
        const after = await snapshotCluster(login);
        assert.match(after.version, /^17\./);
        assert.deepEqual(logicalContent(after), logicalContent(original));
    }

    /** Back to 15 serving, and the 17 data out of the way, so the next fault starts from the same place. */
    async function resetTo15(): Promise<void> {
        await up(config({ version: "15" }));
        for (const v of await volumesNamed(`${PREFIX}pgsql17`)) await run("docker", ["volume", "rm", "-f", v]);
        applier.state.delete("pg17-data");
        await fs.rm(backups, { recursive: true, force: true });
        await fs.mkdir(backups, { mode: 0o700 });
    }

    async function rejects(work: Promise<unknown>, message: RegExp): Promise<void> {
        await assert.rejects(work, (err: Error) => {
            assert.match(err.message, message);
            return true;
        });
    }

    let suite: Suite | undefined;

    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17]);
        ({ backups, base } = suite);
        applier = new Applier((r) => afterStep(r.name));
        await up(config({ version: "15" }));
        await seedSynapse(OLD, "synapse", { sizeMB: 40, seed: 3 });
        original = await snapshotCluster(login);
    });

    after(() => endSuite(PREFIX, suite));

    it("1. a client still connected: preflight refuses and names it; after it leaves, the upgrade completes", async () => {
        const client = await connect(login, "synapse", "synapse-test-client");
        try {
            await rejects(
                up(upgrade()),
                /synapse-pg preflight: 1 client\(s\) are still connected to "sptest-fault-pg15" \(synapse-test-client from [0-9.]+ on synapse\); stop Synapse and its workers first/,
            );
        } finally {
            await client.end();
        }
        await expectOldServingUnchanged();
        await expectUpgradeCompletes(upgrade());
        await resetTo15();
    });

    it("2. too little space for the dump: refused before anything is written; with room, it completes", async () => {
        const small = await fs.mkdtemp(path.join(os.tmpdir(), "synapse-pg-tmpfs-"));
        await run("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", small]);
        try {
            await rejects(
                up(upgrade({ backupDir: small })),
                new RegExp(
                    `synapse-pg preflight: The backup folder ${small} has 2\\.1 MB free but the dump may need [0-9.]+ MB; free [0-9.]+ MB there or set postgres:backupDir to a larger disk\\.`,
                ),
            );
            // The dump step refuses on its own too, for a run by hand.
            const d = await declare(upgrade({ backupDir: small }), PASSWORD);
            const { command, env } = stepOf(d, "dump");
            await rejects(
                runShell(command, env),
                /synapse-pg dump: The backup folder .* has 2\.1 MB free but the dump may need/,
            );
            assert.deepEqual(await fs.readdir(small), [], "nothing was written");
            // And for the new cluster: a host folder on a 2 MB file system.
            await rejects(
                runShell(
                    `npx --no-install synapse-pg preflight --old ${OLD} --major 17 --image ${base.image.replace("{version}", "17")} --data ${small}/pgsql17 --backup-dir ${backups}`,
                    {},
                ),
                new RegExp(
                    `synapse-pg preflight: The new cluster's data location ${small}/pgsql17 \\(on the file system of ${small}(/pgsql17)?\\) has 2\\.1 MB free but needs about [0-9.]+ [MG]B \\([0-9.]+ [MG]B for the new cluster, [0-9.]+ [MG]B for the restore's WAL, [0-9.]+ [MG]B for room left for the running server\\); free [0-9.]+ [MG]B there or choose another postgres:dataRoot\\.`,
                ),
            );
        } finally {
            await run("umount", [small]);
            await fs.rm(small, { recursive: true, force: true });
        }
        await expectOldServingUnchanged();
        await expectUpgradeCompletes(upgrade());
        await resetTo15();
    });

    it("2b. the new cluster's disk fills up during the restore: the partial copy is removed at once, the old cluster serves on", async () => {
        // A host folder on a 64 MB file system: room for initdb, not for the 40 MB of data and its WAL. The steps run
        // by hand, as preflight (rightly) refuses this disk.
        const small = await fs.mkdtemp(path.join(os.tmpdir(), "synapse-pg-tmpfs-"));
        await run("mount", ["-t", "tmpfs", "-o", "size=64m", "tmpfs", small]);
        try {
            const d = await declare(upgrade({ dataRoot: small }), PASSWORD);
            await runShell(stepOf(d, "dump").command, { SYNAPSE_PG_PASSWORD: PASSWORD });
            await rejects(
                runShell(stepOf(d, "restore").command, { SYNAPSE_PG_PASSWORD: PASSWORD }),
                new RegExp(
                    `synapse-pg restore: The new cluster's disk \\(${small}/pgsql17\\) filled up during the restore; the partial copy was removed to give the space back, the old cluster is unchanged, and the next run starts the restore again once there is room`,
                ),
            );
            assert.equal(await containerState(STAGING), "absent", "the staging container is gone");
            assert.deepEqual(await fs.readdir(path.join(small, "pgsql17")), [], "the partial copy is gone");
        } finally {
            await run("docker", ["rm", "-f", STAGING]).catch(() => undefined);
            await run("umount", [small]);
            await fs.rm(small, { recursive: true, force: true });
            await fs.rm(backups, { recursive: true, force: true });
            await fs.mkdir(backups, { mode: 0o700 });
        }
        await expectOldServingUnchanged();
    });

    it("3. the dump killed half-way: the partial dump is never used, and a re-run completes", async () => {
        const d = await declare(upgrade(), PASSWORD);
        const { command, env } = stepOf(d, "dump");
        const child = spawn("/bin/sh", ["-c", command], { cwd: REPO, env: { ...process.env, ...env }, detached: true });
        const exited = new Promise((r) => child.on("close", r));
        const partial = path.join(backups, "upgrade-15-to-17.partial");
        // Bounded: 600 polls of 10 ms for the partial dump to appear.
        for (
            let i = 0;
            i < 600 &&
            !(await fs.stat(path.join(partial, "globals.sql")).then(
                () => true,
                () => false,
            ));
            i++
        ) {
            await new Promise((r) => setTimeout(r, 10));
        }
        process.kill(-child.pid!, "SIGKILL");
        await exited;
        assert.equal(
            await fs.stat(path.join(backups, "upgrade-15-to-17.json")).then(
                () => true,
                () => false,
            ),
            false,
            "no manifest",
        );
        assert.equal(
            await fs.stat(path.join(backups, "upgrade-15-to-17")).then(
                () => true,
                () => false,
            ),
            false,
            "no complete dump",
        );
        await rejects(
            runShell(stepOf(d, "restore").command, env),
            /synapse-pg restore: The dump .*upgrade-15-to-17 has no manifest \(upgrade-15-to-17\.json\), so it may be incomplete; run the dump step again\./,
        );
        await expectOldServingUnchanged();
        await expectUpgradeCompletes(upgrade());
        // The killed attempt's tool containers (the killed docker client leaves them running or only created)
        // are gone: the dump's re-run removed them.
        const tools = (
            await run("docker", [
                "ps",
                "-a",
                "--filter",
                `label=synapse-postgres.tool-of=${OLD}/upgrade-15-to-17`,
                "--format",
                "{{.Names}} {{.Status}}",
            ])
        ).stdout.trim();
        assert.equal(tools, "", "no tool container of the killed dump is left");
        await resetTo15();
    });

    it("4. a truncated or corrupted dump is refused by restore, and a re-run completes", async () => {
        const d = await declare(upgrade(), PASSWORD);
        await runShell(stepOf(d, "dump").command, { SYNAPSE_PG_PASSWORD: PASSWORD });
        const manifest = JSON.parse(await fs.readFile(path.join(backups, "upgrade-15-to-17.json"), "utf8"));
        const biggest = [...manifest.files].sort((a: any, b: any) => b.bytes - a.bytes)[0];
        const file = path.join(backups, biggest.path);
        const bytes = await fs.readFile(file);
        await fs.writeFile(file, bytes.subarray(0, bytes.length >> 1));
        await rejects(
            runShell(stepOf(d, "restore").command, { SYNAPSE_PG_PASSWORD: PASSWORD }),
            new RegExp(
                `The dump file ${file.replace(/[.]/g, "\\.")} is ${bytes.length >> 1} bytes but the manifest says ${bytes.length}: it was truncated or changed`,
            ),
        );
        const flipped = Buffer.from(bytes);
        flipped[flipped.length >> 1] ^= 0x20;
        await fs.writeFile(file, flipped);
        await rejects(
            runShell(stepOf(d, "restore").command, { SYNAPSE_PG_PASSWORD: PASSWORD }),
            /does not match the sha256 in its manifest: it was corrupted or changed; run the dump step again/,
        );
        assert.equal(await containerState(STAGING), "absent", "no restore started");
        await expectOldServingUnchanged();
        await expectUpgradeCompletes(upgrade());
        await resetTo15();
    });

    it("5. an SQL error during restore stops it (ON_ERROR_STOP) with the error, and a re-run completes", async () => {
        const d = await declare(upgrade({ method: "dumpall" }), PASSWORD);
        await runShell(stepOf(d, "dump").command, { SYNAPSE_PG_PASSWORD: PASSWORD });
        // A dump whose SQL fails half-way, with a manifest that matches it (as if pg_dumpall had written it).
        const dumpFile = path.join(backups, "upgrade-15-to-17.sql");
        const text = await fs.readFile(dumpFile, "utf8");
        const at = text.indexOf('\\connect "synapse"');
        await fs.writeFile(
            dumpFile,
            text.slice(0, at) + "SELECT no_such_function_in_any_postgres();\n" + text.slice(at),
        );
        await run("node", [
            "-e",
            `
            const fs = require("fs"), c = require("crypto");
            const m = JSON.parse(fs.readFileSync(${JSON.stringify(path.join(backups, "upgrade-15-to-17.json"))}));
            const f = fs.readFileSync(${JSON.stringify(dumpFile)});
            m.files[0].bytes = f.length; m.files[0].sha256 = c.createHash("sha256").update(f).digest("hex");
            fs.writeFileSync(${JSON.stringify(path.join(backups, "upgrade-15-to-17.json"))}, JSON.stringify(m));`,
        ]);
        await rejects(
            runShell(stepOf(d, "restore").command, { SYNAPSE_PG_PASSWORD: PASSWORD }),
            /synapse-pg restore: The restore into "sptest-fault-pg17-staging" stopped at an error in the script after .*; the old cluster is unchanged and the next run starts the restore again: .*function no_such_function_in_any_postgres\(\) does not exist/,
        );
        await expectOldServingUnchanged();
        await expectUpgradeCompletes(upgrade({ method: "dumpall" }));
        await resetTo15();
    });

    it("6. the new container killed during restore: the step fails, and pulumi up again completes", async () => {
        const d = await declare(upgrade(), PASSWORD);
        await runShell(stepOf(d, "dump").command, { SYNAPSE_PG_PASSWORD: PASSWORD });
        const restoring = runShell(stepOf(d, "restore").command, { SYNAPSE_PG_PASSWORD: PASSWORD });
        const outcome = restoring.then(
            () => "finished",
            (err: Error) => err.message,
        );
        // Bounded: wait up to 60 s for the load to begin (the marker says "restoring"), then kill the server.
        for (let i = 0; i < 600; i++) {
            const marker = await run("docker", [
                "exec",
                STAGING,
                "cat",
                "/var/lib/postgresql/data/synapse-pg-upgrade.json",
            ]).then(
                (r) => r.stdout,
                () => "",
            );
            if (marker.includes('"restoring"')) break;
            await new Promise((r) => setTimeout(r, 100));
        }
        await run("docker", ["kill", STAGING]);
        assert.match(
            await outcome,
            /synapse-pg restore: The new PostgreSQL in "sptest-fault-pg17-staging" stopped during the restore \(killed, or out of memory or disk\); the old cluster is unchanged and the next run starts the restore again/,
        );
        await expectOldServingUnchanged();
        await expectUpgradeCompletes(upgrade());
        await resetTo15();
    });

    it("6b. a database of the old cluster its superuser cannot read locally (a pg_hba.conf rule): refused by preflight; a rule made after the copy point, by verify, which says which and why; with the rule gone, a re-run completes", async () => {
        // A rule a user added for one database refuses local connections there: the dump (over 127.0.0.1) and the
        // restore are not affected; preflight's reading of every database, the write horizon and verify are.
        const hba = (await run("docker", ["exec", OLD, "sh", "-c", 'cat "$PGDATA/pg_hba.conf"'])).stdout;
        const setHba = async (text: string) => {
            await run("docker", ["exec", "-i", "-u", "postgres", OLD, "sh", "-c", 'cat > "$PGDATA/pg_hba.conf"'], {
                stdin: text,
            });
            await run("docker", [
                "exec",
                OLD,
                "psql",
                "-U",
                "synapse",
                "-d",
                "postgres",
                "-c",
                "SELECT pg_reload_conf()",
            ]);
        };
        await run("docker", ["exec", OLD, "psql", "-U", "synapse", "-d", "postgres", "-c", "CREATE DATABASE sideline"]);
        const withSideline = await snapshotCluster(login);
        await setHba(`local sideline all reject\n${hba}`);
        try {
            await rejects(
                up(upgrade()),
                /synapse-pg preflight: "sptest-fault-pg15" refuses its superuser synapse a local connection to the database\(s\) sideline \(.*pg_hba\.conf rejects connection for host "\[local\]", user "synapse", database "sideline".*\), and the upgrade reads every database so: allow it there in pg_hba\.conf and run pulumi up again\./,
            );
            assert.equal(await containerState(`${PREFIX}pg17`), "absent", "the new cluster never served");
        } finally {
            await setHba(hba);
        }
        assert.deepEqual(
            logicalContent(await snapshotCluster(login)),
            logicalContent(withSideline),
            "the old cluster is unchanged",
        );
        // The same rule made after the copy point: copy-config carries it, verify names the old cluster first.
        afterStep = async (name) => {
            if (name === "upgrade-15-to-17-dump") await setHba(`local sideline all reject\n${hba}`);
        };
        try {
            await rejects(
                up(upgrade()),
                /synapse-pg verify: verify could not read the database\(s\) sideline(, \w+)* in "sptest-fault-pg15", so it cannot compare them: .*pg_hba\.conf rejects connection for host "\[local\]", user "synapse", database "sideline"/,
            );
            assert.equal(await containerState(`${PREFIX}pg17`), "absent", "the new cluster never served");
        } finally {
            afterStep = async () => undefined;
            await setHba(hba);
        }
        assert.deepEqual(
            logicalContent(await snapshotCluster(login)),
            logicalContent(withSideline),
            "the old cluster is unchanged",
        );
        // The rule gone from the old cluster, the new one still has it: copy-config carried it before verify ran.
        await rejects(
            up(upgrade()),
            /synapse-pg verify: verify could not read the database\(s\) sideline(, \w+)* in "sptest-fault-pg17-staging", so it cannot compare them: .*pg_hba\.conf rejects connection .*; its access rules are the old cluster's as copy-config carried them, so after changing the old cluster's, bump postgres:attempt\./,
        );
        // A fresh copy, as the message says, reads and compares every database.
        await up(upgrade({ attempt: "2" }));
        const after = await snapshotCluster(login);
        assert.match(after.version, /^17\./);
        assert.deepEqual(logicalContent(after), logicalContent(withSideline));
        await resetTo15();
        await run("docker", ["exec", OLD, "psql", "-U", "synapse", "-d", "postgres", "-c", "DROP DATABASE sideline"]);
        await expectOldServingUnchanged();
    });

    it("6c. cutover killed after it recorded the switch: the re-run finishes the switch instead of refusing", async () => {
        // What such a kill leaves: the marker says cutover, the staging container is stopped but not removed, the
        // old cluster still runs. Made right after verify, before the applier runs cutover.
        afterStep = async (name) => {
            if (name !== "upgrade-15-to-17-verify") return;
            const marker = (await readMarkerIn(STAGING, "synapse"))!;
            await writeMarkerIn(STAGING, "synapse", advanceMarker(marker, "cutover"));
            await run("docker", ["kill", STAGING]);
        };
        try {
            await expectUpgradeCompletes(upgrade());
        } finally {
            afterStep = async () => undefined;
        }
        const cut = applier.commandRuns.filter((r) => r.name === "upgrade-15-to-17-cutover").pop()!.stdout;
        assert.match(
            cut,
            /^cutover: "sptest-fault-pg15" took no writes since the copy was taken; stopped "sptest-fault-pg17-staging" and "sptest-fault-pg15"\.$/m,
        );
        assert.match(
            cut,
            /^cutover: the stopped "sptest-fault-pg15" is back on sptest-fault-net, so a revert starts it as it was\.$/m,
        );
        assert.equal(await containerState(STAGING), "absent");
        assert.equal(await containerState(OLD), "stopped");
        await resetTo15();
        await expectOldServingUnchanged();
    });

    it("6d. the staging container stopped between steps, as a Docker daemon restart leaves it: each next step starts it again", async () => {
        // It has no restart policy (a daemon restart must not bring back a server we stopped): after restore,
        // copy-config and verify, it is found stopped by the next step.
        const stoppedAfter: string[] = [];
        afterStep = async (name) => {
            if (!/-(restore|copy-config|verify)$/.test(name)) return;
            await run("docker", ["stop", STAGING]);
            stoppedAfter.push(name.replace("upgrade-15-to-17-", ""));
        };
        try {
            await expectUpgradeCompletes(upgrade());
        } finally {
            afterStep = async () => undefined;
        }
        assert.deepEqual(stoppedAfter, ["restore", "copy-config", "verify"]);
        const verify = applier.commandRuns.filter((r) => r.name === "upgrade-15-to-17-verify").pop()!.stdout;
        assert.match(verify, /difference\(s\)/);
        await resetTo15();
        await expectOldServingUnchanged();
    });

    it("6e. a real Docker daemon restart after restore and again after verify: the old cluster comes back fenced, the staging container is started again, and the upgrade completes", async () => {
        const networksOf = async (name: string) =>
            Object.keys(
                JSON.parse((await run("docker", ["inspect", "-f", "{{json .NetworkSettings.Networks}}", name])).stdout),
            );
        const seen: string[] = [];
        afterStep = async (name) => {
            if (!/-(restore|verify)$/.test(name)) return;
            await restartDockerDaemon();
            // unless-stopped brings the old cluster back; its fence (no network) holds across the restart.
            seen.push(
                `${name.replace("upgrade-15-to-17-", "")}: old ${await containerState(OLD)} on [${(await networksOf(OLD)).join(",")}], staging ${await containerState(STAGING)}`,
            );
        };
        try {
            await expectUpgradeCompletes(upgrade());
        } finally {
            afterStep = async () => undefined;
        }
        assert.deepEqual(seen, [
            "restore: old running on [], staging stopped",
            "verify: old running on [], staging stopped",
        ]);
        const cut = applier.commandRuns.filter((r) => r.name === "upgrade-15-to-17-cutover").pop()!.stdout;
        assert.match(
            cut,
            /^cutover: "sptest-fault-pg15" took no writes since the copy was taken; stopped "sptest-fault-pg17-staging" and "sptest-fault-pg15"\.$/m,
        );
        assert.deepEqual(
            await networksOf(OLD),
            [`${PREFIX}net`],
            "stopped, the old container is back on its network for a revert",
        );
        await resetTo15();
        await expectOldServingUnchanged();
    });

    it("7. a postgresql.conf setting the new major rejects: named with file and line before the switch; left out by consent, it completes", async () => {
        // Valid in 15, removed in 16: the guide's "watch the logs" case.
        await run("docker", [
            "exec",
            OLD,
            "psql",
            "-U",
            "synapse",
            "-d",
            "postgres",
            "-c",
            "ALTER SYSTEM SET vacuum_defer_cleanup_age = 10",
            "-c",
            "SELECT pg_reload_conf()",
        ]);
        // And one the new server takes only at a start: copy-config must restart it (the old one keeps its 100).
        await run("docker", [
            "exec",
            OLD,
            "psql",
            "-U",
            "synapse",
            "-d",
            "postgres",
            "-c",
            "ALTER SYSTEM SET max_connections = 150",
        ]);
        // Access rules a user added by hand: carried as they are (a hostssl rule while ssl is off is taken by both
        // servers with a warning: it never matches, in the old cluster either).
        await run("docker", [
            "exec",
            "-u",
            "postgres",
            OLD,
            "sh",
            "-c",
            'echo "hostssl synapse synapse 192.0.2.0/24 scram-sha-256" >> "$PGDATA/pg_hba.conf" && echo "matrix   ops   synapse" >> "$PGDATA/pg_ident.conf"',
        ]);
        await rejects(
            up(upgrade()),
            /synapse-pg copy-config: The new PostgreSQL rejects 1 setting\(s\) of the old configuration, so the upgrade stops before the switch: postgresql\.auto\.conf line \d+: vacuum_defer_cleanup_age \(removed in 16: delete the line.*or leave them out of the new cluster only with `pulumi config set postgres:dropSettings vacuum_defer_cleanup_age`, and run pulumi up again\./,
        );
        assert.equal(await containerState(`${PREFIX}pg17`), "absent", "the new cluster never served");
        await expectOldServingUnchanged();
        // The user's consent, as the message asks for it: the line is left out of the new cluster only.
        const mark = applier.commandRuns.length;
        await expectUpgradeCompletes(upgrade({ dropSettings: "vacuum_defer_cleanup_age" }));
        const copy = applier.commandRuns.slice(mark).find((r) => r.name === "upgrade-15-to-17-copy-config")!.stdout;
        assert.match(
            copy,
            /copy-config: left out of the new cluster, as postgres:dropSettings allows: postgresql\.auto\.conf line \d+: vacuum_defer_cleanup_age \(removed in 16: delete the line.*\); the old cluster keeps it\./,
        );
        assert.match(
            copy,
            /copy-config: copied (postgresql\.conf, )?postgresql\.auto\.conf, pg_hba\.conf and pg_ident\.conf; the new server accepted every setting and restarted with them\./,
        );
        const maxConnections = (
            await run("docker", [
                "exec",
                `${PREFIX}pg17`,
                "psql",
                "-U",
                "synapse",
                "-d",
                "postgres",
                "-Atc",
                "SHOW max_connections",
            ])
        ).stdout.trim();
        assert.equal(maxConnections, "150", "the restart-only setting reached the new cluster");
        const newRules = (
            await run("docker", [
                "exec",
                `${PREFIX}pg17`,
                "sh",
                "-c",
                'cat "$PGDATA/pg_hba.conf" "$PGDATA/pg_ident.conf"',
            ])
        ).stdout;
        assert.match(
            newRules,
            /^hostssl synapse synapse 192\.0\.2\.0\/24 scram-sha-256$/m,
            "the old cluster's access rule, carried",
        );
        assert.match(newRules, /^matrix {3}ops {3}synapse$/m, "the old cluster's user map, carried");
        // The old container is stopped after the switch: its file is read with docker cp.
        const oldAuto = (await copyFileOut(OLD, "/var/lib/postgresql/data/postgresql.auto.conf"))!.toString("utf8");
        assert.match(oldAuto, /^vacuum_defer_cleanup_age = '10'$/m, "the old cluster's file is untouched");
        const newAuto = (
            await run("docker", ["exec", `${PREFIX}pg17`, "sh", "-c", 'cat "$PGDATA/postgresql.auto.conf"'])
        ).stdout;
        assert.match(
            newAuto,
            /^# vacuum_defer_cleanup_age = '10' {4}# left out by synapse-postgres \(postgres:dropSettings\)/m,
        );
    });

    it("8. a re-run after a successful upgrade runs nothing and changes nothing", async () => {
        const before = applier.commandRuns.length;
        await up(upgrade({ dropSettings: "vacuum_defer_cleanup_age" }));
        assert.deepEqual(
            applier.commandRuns.slice(before).map((c) => c.name),
            [],
            "no step ran again",
        );
        const after = await snapshotCluster(login);
        assert.match(after.version, /^17\./);
        assert.deepEqual(logicalContent(after), logicalContent(original));
        assert.equal(await containerState(OLD), "stopped");
    });
});
