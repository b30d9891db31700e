// The whole lifecycle on real PostgreSQL in real containers: the program is evaluated under mocks for each stack
// config and what it declares is applied to Docker (applier.ts), running the exact step commands `pulumi up` would.
// 15 -> 17 (each step run twice), minor update, revert to 15, upgrade again over the reverted 17, retire 15,
// 17 -> 18 with the 18+ layout. The data is compared with the tests' own snapshot, not with the verify step.
import { strict as assert } from "node:assert";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import { run } from "../../runner/docker/process";
import { MARKER_FILE } from "../../runner/target/markers";
import { declare, DeclaredResource } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { ClusterSnapshot, connect, countRows, logicalContent, snapshotCluster } from "../fixtures/snapshot";
import { Applier, runShell } from "./applier";
import {
    containerState,
    endSuite,
    startSuite,
    Suite,
    tagImage,
    TEST_IMAGE,
    volumeExists,
    volumesNamed,
} from "./docker-env";
import * as path from "node:path";

const PREFIX = "sptest-life-";
const PASSWORD = "Synapse-Pässword-🔒-1";
const PORT = 25432;

let psSamples = 0;
const secretSightings: string[] = [];

/** Samples every process's arguments (ps) until stopped, every 100 ms; bounded by the work it watches. */
function watchProcessArguments(needle: string): { stop(): Promise<string[]> } {
    const seen: string[] = [];
    let running = true;
    const loop = (async () => {
        while (running) {
            const { stdout } = await run("ps", ["-eo", "args"]);
            psSamples++;
            for (const line of stdout.split("\n")) if (line.includes(needle)) seen.push(line);
            await new Promise((r) => setTimeout(r, 100));
        }
    })();
    return {
        async stop() {
            running = false;
            await loop;
            return seen;
        },
    };
}

/**
 * Our containers, other than the serving clusters (whose POSTGRES_PASSWORD the README explains), whose environment
 * holds the password, as docker inspect shows it to anyone who may run it; and the staging containers looked at.
 */
async function passwordInEnvironment(): Promise<{ holding: string[]; staging: string[] }> {
    const serving = [15, 17, 18].map((m) => `${PREFIX}pg${m}`);
    const names = (await run("docker", ["ps", "-a", "--format", "{{.Names}}"])).stdout
        .split("\n")
        .filter((n) => n.startsWith(PREFIX) && !serving.includes(n));
    const holding: string[] = [];
    for (const name of names) {
        const env = (await run("docker", ["inspect", "-f", "{{json .Config.Env}}", name]).catch(() => ({ stdout: "" })))
            .stdout;
        if (env.includes(PASSWORD)) holding.push(name);
    }
    return { holding, staging: names.filter((n) => n.endsWith("-staging")) };
}

async function listFiles(dir: string): Promise<string[]> {
    const entries = await fs.readdir(dir, { withFileTypes: true, recursive: true });
    return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath ?? (e as any).path, e.name));
}

/**
 * Every 8 hex digits in a row of each role's password hash and of the md5 of that hash, lower case: none may be in
 * what we print or write outside the dump (an md5 hash, or a digest of one, is an offline oracle for the password).
 */
async function passwordHashFragments(login: { port: number; user: string; password: string }): Promise<Set<string>> {
    const c = await connect(login, "postgres");
    const hashes: string[] = (
        await c.query("SELECT rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL")
    ).rows.map((r) => r.rolpassword);
    await c.end();
    const fragments = new Set<string>();
    for (const hash of hashes) {
        for (const hex of [...(hash.match(/[0-9a-f]{8,}/gi) ?? []), createHash("md5").update(hash).digest("hex")]) {
            for (let i = 0; i + 8 <= hex.length; i++) fragments.add(hex.slice(i, i + 8).toLowerCase());
        }
    }
    return fragments;
}

function fragmentsIn(text: string, fragments: Set<string>): string[] {
    const lower = text.toLowerCase();
    return [...fragments].filter((f) => lower.includes(f));
}

describe("lifecycle in real containers: 15 -> 17, minor update, revert, upgrade again, retire, 17 -> 18", function () {
    this.timeout(15 * 60 * 1000);
    let backups: string;
    let base: Record<string, string>;
    let original: ClusterSnapshot;
    const reruns: string[] = [];
    const login = { port: PORT, user: "synapse", password: PASSWORD };

    // Every step command (the create, or the update the applier ran) runs a second time right after it succeeded,
    // as a person re-running it by hand would; its whole output is kept.
    const envSightings: string[] = [];
    const stagingLookedAt = new Set<string>();
    const applier = new Applier(async (r: DeclaredResource, env, line) => {
        const again = await runShell(line, env);
        reruns.push(`${r.name}: ${again.stdout.trim()}`);
        const { holding, staging } = await passwordInEnvironment();
        envSightings.push(...holding.map((n) => `${n} after ${r.name}`));
        staging.forEach((n) => stagingLookedAt.add(n));
    });

    let suite: Suite | undefined;

    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17, 18]);
        ({ backups, base } = suite);
        await tagImage(`${TEST_IMAGE}:17`, `${TEST_IMAGE}:17.5`);
        await tagImage(`${TEST_IMAGE}:17`, `${TEST_IMAGE}:17.6`);
    });

    after(() => endSuite(PREFIX, suite));

    const up = async (config: Record<string, string>) => {
        reruns.length = 0;
        await applier.up(await declare({ ...base, ...config }, PASSWORD));
    };
    const commandsRun = (since: number) => applier.commandRuns.slice(since).map((c) => c.name);

    it("deploys 15 and serves it as db, reachable with the password on 127.0.0.1", async () => {
        await up({ version: "15" });
        assert.equal(await containerState(`${PREFIX}pg15`), "running");
        await seedSynapse(`${PREFIX}pg15`, "synapse", { sizeMB: 8, seed: 7 });
        original = await snapshotCluster(login);
        assert.match(original.version, /^15\./);
        const { tables, rows } = countRows(original);
        assert.ok(tables > 130 && rows > 5000, `seeded ${tables} tables, ${rows} rows`);
        assert.ok(original.roles.matrix_reporting, "the second role exists");
        assert.ok(original.databases.synapse_archive, "the second database exists");
    });

    it("upgrades 15 -> 17: the steps run in order, each twice, and 17 serves the same data", async () => {
        const mark = applier.commandRuns.length;
        const ps = watchProcessArguments(PASSWORD);
        try {
            await up({ version: "17.5", upgradeFrom: "15" });
        } finally {
            secretSightings.push(...(await ps.stop()));
        }
        // before-replace of the new serving container first: it does not exist yet, so it only checks.
        assert.deepEqual(commandsRun(mark), [
            "pg17-before-replace",
            "upgrade-15-to-17-preflight",
            "upgrade-15-to-17-dump",
            "upgrade-15-to-17-restore",
            "upgrade-15-to-17-copy-config",
            "upgrade-15-to-17-verify",
            "upgrade-15-to-17-cutover",
            "pg17-serve",
        ]);
        const after = await snapshotCluster(login);
        assert.match(after.version, /^17\./);
        assert.deepEqual(logicalContent(after), logicalContent(original));
        const { tables, rows } = countRows(after);
        console.log(
            `      upgrade path 15->17: ${tables} tables, ${rows} rows, ${Object.keys(after.sequences).length} sequences, ${Object.keys(after.roles).length} roles compared row for row`,
        );
        assert.equal(await containerState(`${PREFIX}pg15`), "stopped", "the old cluster is stopped, not removed");
        assert.equal(await containerState(`${PREFIX}pg17-staging`), "absent");
        assert.ok(await volumeExists(`${PREFIX}pgsql15`));
        // The second runs: each succeeded and said so.
        const rerun = (step: string) => reruns.find((r) => r.startsWith(`upgrade-15-to-17-${step}:`)) ?? "";
        assert.match(rerun("restore"), /already holds this dump .*nothing to do/);
        assert.match(rerun("copy-config"), /already in place; nothing to do/);
        assert.match(rerun("cutover"), /already switched; nothing to do/);
        assert.match(reruns.find((r) => r.startsWith("pg17-serve:")) ?? "", /already running/);
        const dump = await fs.stat(path.join(backups, "upgrade-15-to-17"));
        assert.equal(dump.mode & 0o777, 0o700, "the dump folder is open to its owner only");
        const manifest = JSON.parse(await fs.readFile(path.join(backups, "upgrade-15-to-17.json"), "utf8"));
        for (const f of manifest.files)
            assert.equal((await fs.stat(path.join(backups, f.path))).mode & 0o777, 0o600, f.path);
    });

    it("keeps the password out of every command line, step output, stack output and dump, and out of trust rules", async () => {
        assert.ok(psSamples > 20, `ps was sampled during the upgrade (${psSamples} samples)`);
        assert.deepEqual(secretSightings, [], "no process had the password in its arguments");
        assert.ok(stagingLookedAt.has(`${PREFIX}pg17-staging`), "the staging container's environment was looked at");
        assert.deepEqual(
            envSightings,
            [],
            "no container of ours but the serving ones has the password in its environment",
        );
        for (const c of applier.commandRuns) {
            assert.ok(
                !c.stdout.includes(PASSWORD) && !c.stderr.includes(PASSWORD),
                `${c.name}'s output has no password`,
            );
        }
        const declared = await declare({ ...base, version: "17.5", upgradeFrom: "15" }, PASSWORD);
        assert.ok(!JSON.stringify(declared.outputs).includes(PASSWORD), "no stack output has the password");
        const fragments = await passwordHashFragments(login);
        assert.ok(fragments.size >= 25 * 2, `${fragments.size} fragments of the roles' password hashes`);
        for (const c of applier.commandRuns)
            assert.deepEqual(
                fragmentsIn(c.stdout + c.stderr, fragments),
                [],
                `${c.name}'s output has no part of a password hash`,
            );
        assert.deepEqual(
            fragmentsIn(JSON.stringify(declared.outputs), fragments),
            [],
            "no stack output has part of a password hash",
        );
        const marker = (await run("docker", ["exec", `${PREFIX}pg17`, "sh", "-c", `cat "$PGDATA/${MARKER_FILE}"`]))
            .stdout;
        assert.deepEqual(fragmentsIn(marker, fragments), [], "the marker has no part of a password hash");
        for (const container of [`${PREFIX}pg15`, `${PREFIX}pg17`]) {
            const log = await run("docker", ["logs", container]);
            assert.deepEqual(
                fragmentsIn(log.stdout + log.stderr, fragments),
                [],
                `${container}'s server log has no part of a password hash`,
            );
        }
        // The dump holds the roles' hashes, as it must to restore them (0600, checked above); nothing else we write does.
        const manifest = JSON.parse(await fs.readFile(path.join(backups, "upgrade-15-to-17.json"), "utf8"));
        const dumpFiles = new Set<string>(manifest.files.map((f: { path: string }) => path.join(backups, f.path)));
        for (const file of (await listFiles(backups)).filter((f) => !dumpFiles.has(f))) {
            assert.deepEqual(
                fragmentsIn(await fs.readFile(file, "utf8"), fragments),
                [],
                `${file} has no part of a password hash`,
            );
        }
        for (const file of await listFiles(backups)) {
            assert.ok(
                !(await fs.readFile(file)).includes(Buffer.from(PASSWORD)),
                `${file} holds only the password's SCRAM hash`,
            );
        }
        const hba = (await run("docker", ["exec", `${PREFIX}pg17`, "sh", "-c", "grep -v '^#' \"$PGDATA/pg_hba.conf\""]))
            .stdout;
        const trustedHosts = hba
            .split("\n")
            .filter((l) => /^\s*host/.test(l) && /\btrust\b/.test(l) && !/127\.0\.0\.1\/32|::1\/128/.test(l));
        assert.deepEqual(trustedHosts, [], "no trust for connections from other hosts");
        assert.match(hba, /^host\s+all\s+all\s+all\s+scram-sha-256$/m);
        const ports = (await run("docker", ["inspect", "-f", "{{json .HostConfig.PortBindings}}", `${PREFIX}pg17`]))
            .stdout;
        assert.deepEqual(JSON.parse(ports), { "5432/tcp": [{ HostIp: "127.0.0.1", HostPort: String(PORT) }] });
    });

    it("a minor update 17.5 -> 17.6 replaces only the container, on the same data, with no dump", async () => {
        const mark = applier.commandRuns.length;
        await up({ version: "17.6", upgradeFrom: "15" });
        const runs = applier.commandRuns.slice(mark);
        assert.deepEqual(
            runs.filter((c) => !c.update).map((c) => c.name),
            ["pg17-before-replace", "pg17-serve"],
        );
        // The finished steps whose command lines name the image are updated in the state only: nothing runs.
        const updated = runs.filter((c) => c.update);
        assert.ok(
            updated.length > 0 && updated.every((c) => c.name.startsWith("upgrade-15-to-17-")),
            updated.map((c) => c.name).join(", "),
        );
        for (const c of updated)
            assert.match(
                c.stderr,
                /: done in an earlier pulumi up; its new inputs are recorded and nothing runs \(bump postgres:attempt to run the upgrade again with them\)$/m,
            );
        assert.match(
            runs.find((c) => c.name === "pg17-before-replace")!.stdout,
            /^before-replace: "sptest-life-pg17" will be replaced \(its image changes from \S+:17\.5 to \S+:17\.6\); Synapse was not running here\.$/m,
        );
        assert.match(
            runs.find((c) => c.name === "pg17-before-replace")!.stdout,
            /^before-replace: the replacement's server \(\S+:17\.6, the declared settings, this cluster's configuration files\) started and stopped cleanly in a throw-away container\.$/m,
        );
        const { stdout } = await run("docker", ["inspect", "-f", "{{.Config.Image}}", `${PREFIX}pg17`]);
        assert.equal(stdout.trim(), `${TEST_IMAGE}:17.6`);
        assert.deepEqual(logicalContent(await snapshotCluster(login)), logicalContent(original));
    });

    it("reverts to 15 by the earlier config: the old cluster serves exactly the data it had", async () => {
        await up({ version: "15" });
        const reverted = await snapshotCluster(login);
        assert.deepEqual(reverted, original, "same version, same data, same roles and sequences as before the upgrade");
        assert.equal(await containerState(`${PREFIX}pg17`), "absent");
        assert.ok(await volumeExists(`${PREFIX}pgsql17`), "the 17 data is kept after the revert");
    });

    it("upgrades again with the guide's dumpall method: the reverted 17, which served, is kept aside", async () => {
        const mark = applier.commandRuns.length;
        await up({ version: "17.6", upgradeFrom: "15", method: "dumpall" });
        const restore = applier.commandRuns.slice(mark).find((c) => c.name === "upgrade-15-to-17-restore")!;
        assert.match(restore.stdout, new RegExp(`was kept at ${PREFIX}pgsql17-reverted-\\d{8}T\\d{6}`));
        const aside = (await volumesNamed(`${PREFIX}pgsql17-reverted-`))[0];
        const kept = await run("docker", [
            "run",
            "--rm",
            "-v",
            `${aside}:/d`,
            "--entrypoint",
            "cat",
            `${TEST_IMAGE}:17`,
            "/d/PG_VERSION",
        ]);
        assert.equal(kept.stdout.trim(), "17");
        const after = await snapshotCluster(login);
        assert.match(after.version, /^17\./);
        assert.deepEqual(logicalContent(after), logicalContent(original));
    });

    it("retires 15: its container goes, its volume stays, 17 keeps serving untouched", async () => {
        const mark = applier.commandRuns.length;
        await up({ version: "17.6" });
        assert.deepEqual(commandsRun(mark), []);
        assert.equal(await containerState(`${PREFIX}pg15`), "absent");
        assert.ok(await volumeExists(`${PREFIX}pgsql15`));
        assert.equal(await containerState(`${PREFIX}pg17`), "running");
    });

    it("upgrades 17 -> 18 into the 18+ layout (volume at /var/lib/postgresql, PGDATA below it)", async () => {
        await up({ version: "18", upgradeFrom: "17.6" });
        const after = await snapshotCluster(login);
        assert.match(after.version, /^18\./);
        assert.deepEqual(logicalContent(after), logicalContent(original));
        const { tables, rows } = countRows(after);
        console.log(`      upgrade path 17->18: ${tables} tables, ${rows} rows compared row for row`);
        const { stdout } = await run("docker", [
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}};{{end}}",
            `${PREFIX}pg18`,
        ]);
        assert.equal(
            stdout.trim(),
            `volume ${PREFIX}pgsql18 /var/lib/postgresql;`,
            "one mount, the named volume, no anonymous volume",
        );
        const pgdata = await run("docker", [
            "exec",
            `${PREFIX}pg18`,
            "cat",
            "/var/lib/postgresql/18/docker/PG_VERSION",
        ]);
        assert.equal(pgdata.stdout.trim(), "18");
    });
});
