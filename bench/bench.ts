// Benchmark: the guide's method against ours, side by side in one run, with a raw copy of the data as the floor.
//
//   npm run bench -- --size 1GB [--json] [--seed 1]
//   npm run bench -- --synapse --size 1GB [--json]   (a real Synapse and the outage its client sees: synapse-outage.ts)
//
// Seeds a Synapse-shaped database of that size in a 15 container, then times
//   (a) the guide, in its order: pg_dumpall in the old container to one file, a new 17 container started (its
//       initdb), psql -f into it, postgresql.conf copied across and the container restarted with it: its whole
//       downtime, and its dump and restore alone;
//   (b) ours: the step runner's dump and restore (method directory), run through its CLI as pulumi up runs it,
//       and the whole downtime (preflight, dump, restore, copy-config, verify, cutover, and the switch: the new
//       serving container created as the program declares it, and the serve step, which waits for its server);
//   (b') ours, method pg_upgrade: prepare (while Synapse would still run, not downtime), then the downtime
//       (preflight, upgrade, copy-config, verify, cutover, the switch);
//   (c) the floor: a raw copy of the stopped old cluster's data folder.
// It prints each time, ours/guide, ours/floor, the step runner's peak RSS, and writes JSON to bench/results/.
import { createReadStream, createWriteStream, promises as fs } from "node:fs";
import { run } from "../runner/docker/process";
import { seedSynapse } from "../tests/fixtures/seed";
import {
    cleanup,
    flag,
    IMAGE,
    NETWORK,
    parseSize,
    PREFIX,
    REPO,
    runSteps,
    said,
    seconds,
    serveNew,
    startCluster,
    step,
    waitReady,
} from "./harness";
import { benchSynapse } from "./synapse-outage";
import * as os from "node:os";
import * as path from "node:path";

const TARGET_IMAGE = `${IMAGE}:17`;

async function main(): Promise<void> {
    const sizeText = flag("size", "1GB")!;
    const sizeMB = parseSize(sizeText);
    const seed = Number(flag("seed", "1"));
    const json = process.argv.includes("--json");
    if (process.argv.includes("--synapse")) return benchSynapse(sizeText, sizeMB, json);
    const backups = await fs.mkdtemp(path.join(os.tmpdir(), "synapse-pg-bench-"));
    await cleanup();
    await run("docker", ["network", "create", NETWORK]);
    try {
        const old = `${PREFIX}pg15`;
        const databaseBytes = await seedOld(old, sizeMB, seed);
        const guide = await runGuide(old, backups);
        const rss: Record<string, number> = {};
        const ours = await runDumpMethod(old, backups, rss);
        const pgUpgrade = await runPgUpgradeMethod(old, rss);
        const floorSeconds = await runFloor();
        const result = {
            when: new Date().toISOString(),
            size: sizeText,
            databaseBytes,
            seed,
            machine: { cpus: os.cpus().length, memoryGB: Math.round(os.totalmem() / 1e9) },
            ...guide,
            ...ours,
            pgUpgrade: {
                ...pgUpgrade,
                downtimeOverGuide: pgUpgrade.downtimeSeconds / guide.guideDowntimeSeconds,
                downtimeOverGuideDumpRestore: pgUpgrade.downtimeSeconds / guide.guideSeconds,
            },
            floorSeconds,
            oursOverGuide: ours.oursSeconds / guide.guideSeconds,
            downtimeOverGuide: ours.oursDowntimeSeconds / guide.guideDowntimeSeconds,
            oursOverFloor: ours.oursSeconds / floorSeconds,
            peakRssMB: Math.max(...Object.values(rss)),
            peakRssMBByStep: rss,
        };
        await fs.mkdir(path.join(REPO, "bench/results"), { recursive: true });
        const out = path.join(REPO, "bench/results", `${result.when.replace(/[:.]/g, "-")}-${sizeText}.json`);
        await fs.writeFile(out, JSON.stringify(result, null, 2) + "\n");
        if (json) console.log(JSON.stringify(result, null, 2));
        else printResult(result, out);
    } finally {
        await cleanup();
        await fs.rm(backups, { recursive: true, force: true });
    }
}

/** A Synapse-shaped database of the asked size in a 15 container; returns its size in bytes. */
async function seedOld(old: string, sizeMB: number, seed: number): Promise<number> {
    await startCluster(old, 15, `${PREFIX}pgsql15`);
    const [seedSeconds] = await seconds(() => seedSynapse(old, "synapse", { sizeMB, seed }));
    const psql = ["exec", old, "psql", "-U", "synapse", "-d", "postgres"];
    await run("docker", [...psql, "-qc", "CHECKPOINT"]);
    const sizeQuery = "SELECT sum(pg_database_size(datname)) FROM pg_database";
    const dbBytes = Number((await run("docker", [...psql, "-Atc", sizeQuery])).stdout.trim().split("\n")[0]);
    console.error(`seeded ${(dbBytes / 1e9).toFixed(2)} GB in ${seedSeconds.toFixed(0)} s`);
    return dbBytes;
}

/**
 * (a) The guide, in its order, with Synapse stopped throughout: pg_dumpall inside the old container, a new 17
 * container on a new volume, psql -f into it, postgresql.conf copied across and a restart to apply it.
 */
async function runGuide(old: string, backups: string) {
    console.error(
        "(a) the guide's method: pg_dumpall > file; new container; psql -f file; copy postgresql.conf; restart",
    );
    const guideNew = `${PREFIX}guide-pg17`;
    const guideFile = path.join(backups, "guide.sql");
    const guideSteps: Record<string, number> = {};
    const [guideDowntimeSeconds] = await seconds(async () => {
        [guideSteps.dump] = await seconds(() =>
            run("docker", ["exec", old, "pg_dumpall", "-U", "synapse"], { stdout: createWriteStream(guideFile) }),
        );
        [guideSteps.start] = await seconds(() => startCluster(guideNew, 17, `${PREFIX}guide-pgsql17`));
        // The guide runs psql without ON_ERROR_STOP: "role/database already exists" errors scroll past.
        const psql = ["exec", "-i", guideNew, "psql", "-q", "-U", "synapse", "-d", "postgres", "-o", "/dev/null"];
        [guideSteps.restore] = await seconds(() =>
            run("docker", psql, { stdin: createReadStream(guideFile) }).catch(() => undefined),
        );
        [guideSteps.config] = await seconds(async () => {
            const conf = (await run("docker", ["exec", old, "sh", "-c", 'cat "$PGDATA/postgresql.conf"'])).stdout;
            const write = ["exec", "-i", "-u", "postgres", guideNew, "sh", "-c", 'cat > "$PGDATA/postgresql.conf"'];
            await run("docker", write, { stdin: conf });
            await run("docker", ["restart", guideNew]);
            await waitReady(guideNew);
        });
    });
    await run("docker", ["rm", "-f", guideNew]);
    return { guideSeconds: guideSteps.dump + guideSteps.restore, guideDowntimeSeconds, guideSteps };
}

/** (b) Ours, method directory, through the CLI as pulumi up runs it, and the switch. */
async function runDumpMethod(old: string, backups: string, rss: Record<string, number>) {
    console.error("(b) ours: synapse-pg, default method");
    const staging = `${PREFIX}pg17-staging`;
    const data = `${PREFIX}pgsql17`;
    const cluster = ["--image", TARGET_IMAGE, "--data", data, "--major", "17"];
    const steps: [string, string[]][] = [
        ["preflight", ["preflight", "--old", old, ...cluster, "--backup-dir", backups]],
        ["dump", ["dump", "--old", old, "--backup-dir", backups, "--name", "ours", "--tool-image", TARGET_IMAGE]],
        ["restore", ["restore", "--new", staging, ...cluster, "--dump", path.join(backups, "ours")]],
        ["copy-config", ["copy-config", "--old", old, "--new", staging]],
        ["verify", ["verify", "--old", old, "--new", staging]],
        ["cutover", ["cutover", "--old", old, "--new", staging, ...cluster]],
    ];
    const timings = await runSteps(steps, rss, "");
    [timings.serve, rss.serve] = await seconds(() => serveNew(`${PREFIX}pg17`, data, 17));
    const oursDowntimeSeconds = Object.values(timings).reduce((a, b) => a + b, 0);
    return { oursSeconds: timings.dump + timings.restore, oursSteps: timings, oursDowntimeSeconds };
}

/**
 * (b') Ours, method pg_upgrade, from the same old cluster (started again: cutover stopped it), and (b)'s new
 * cluster out of the way (a revert would stop it): prepare while Synapse would still run, then the downtime.
 */
async function runPgUpgradeMethod(old: string, rss: Record<string, number>) {
    console.error("(b') ours: synapse-pg, method pg_upgrade");
    await run("docker", ["rm", "-f", `${PREFIX}pg17`]);
    await run("docker", ["start", old]);
    await waitReady(old);
    const staging = `${PREFIX}pg17u-staging`;
    const data = `${PREFIX}pgsql17u`;
    const cluster = ["--image", TARGET_IMAGE, "--data", data, "--major", "17"];
    const [prepareSeconds, prepareRss] = await seconds(() =>
        step(["prepare", "--old", old, "--new", staging, ...cluster]),
    );
    rss.prepare = prepareRss;
    const steps: [string, string[]][] = [
        ["preflight", ["preflight", "--old", old, ...cluster, "--new", staging]],
        ["upgrade", ["upgrade", "--old", old, "--new", staging, ...cluster]],
        ["copy-config", ["copy-config", "--old", old, "--new", staging]],
        ["verify", ["verify", "--old", old, "--new", staging]],
        ["cutover", ["cutover", "--old", old, "--new", staging, ...cluster]],
    ];
    const timings = await runSteps(steps, rss, "pg_upgrade ");
    [timings.serve, rss["pg_upgrade serve"]] = await seconds(() => serveNew(`${PREFIX}pg17u`, data, 17));
    const via = /pg_upgrade --link on the standby/.test(said.upgrade ?? "") ? "link on a standby" : "copy";
    return { via, prepareSeconds, steps: timings, downtimeSeconds: Object.values(timings).reduce((a, b) => a + b, 0) };
}

/** (c) The floor: a raw copy of the stopped old cluster's data. */
async function runFloor(): Promise<number> {
    console.error("(c) the floor: raw copy of the data folder");
    const volumes = ["-v", `${PREFIX}pgsql15:/from`, "-v", `${PREFIX}raw:/to`];
    const [floorSeconds] = await seconds(() =>
        run("docker", ["run", "--rm", ...volumes, "--entrypoint", "cp", TARGET_IMAGE, "-a", "/from/.", "/to/"]),
    );
    return floorSeconds;
}

type BenchResult = Awaited<ReturnType<typeof runGuide>> &
    Awaited<ReturnType<typeof runDumpMethod>> & {
        databaseBytes: number;
        seed: number;
        machine: { cpus: number };
        pgUpgrade: Awaited<ReturnType<typeof runPgUpgradeMethod>> & {
            downtimeOverGuide: number;
            downtimeOverGuideDumpRestore: number;
        };
        floorSeconds: number;
        oursOverGuide: number;
        downtimeOverGuide: number;
        oursOverFloor: number;
        peakRssMB: number;
    };

function printResult(r: BenchResult, out: string): void {
    const f = (n: number) => `${n.toFixed(1)} s`;
    const list = (t: Record<string, number>) =>
        Object.entries(t)
            .map(([k, v]) => `${k} ${v.toFixed(1)}`)
            .join(", ");
    const u = r.pgUpgrade;
    console.log(`database: ${(r.databaseBytes / 1e9).toFixed(2)} GB (seed ${r.seed}), ${r.machine.cpus} CPUs`);
    console.log(`(a) guide, pg_dumpall + psql -f:      ${f(r.guideSeconds)}`);
    console.log(`    guide, whole downtime:            ${f(r.guideDowntimeSeconds)}   (${list(r.guideSteps)})`);
    console.log(
        `(b) ours, dump + restore:             ${f(r.oursSeconds)}   (ours/guide ${r.oursOverGuide.toFixed(2)})`,
    );
    console.log(
        `    ours, whole downtime:             ${f(r.oursDowntimeSeconds)}   (downtime/guide's ${r.downtimeOverGuide.toFixed(2)}; ${list(r.oursSteps)})`,
    );
    console.log(
        `(b') ours, pg_upgrade (${u.via}), whole downtime: ${f(u.downtimeSeconds)}   (downtime/guide's ${u.downtimeOverGuide.toFixed(2)}, /guide's dump+restore ${u.downtimeOverGuideDumpRestore.toFixed(2)}; ${list(u.steps)})`,
    );
    console.log(`    before the downtime, prepare:     ${f(u.prepareSeconds)}`);
    console.log(
        `(c) floor, raw copy of the data:      ${f(r.floorSeconds)}   (ours/floor ${r.oursOverFloor.toFixed(2)})`,
    );
    console.log(`step runner peak RSS: ${r.peakRssMB.toFixed(0)} MB`);
    console.log(`written to ${path.relative(REPO, out)}`);
}

main().catch((err) => {
    console.error(err.message);
    process.exit(1);
});
