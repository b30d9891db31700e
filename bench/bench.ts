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
        await startCluster(old, 15, `${PREFIX}pgsql15`);
        const [seedSeconds] = await seconds(() => seedSynapse(old, "synapse", { sizeMB, seed }));
        await run("docker", ["exec", old, "psql", "-U", "synapse", "-d", "postgres", "-qc", "CHECKPOINT"]);
        const [[dbBytes]] = [
            (
                await run("docker", [
                    "exec",
                    old,
                    "psql",
                    "-U",
                    "synapse",
                    "-d",
                    "postgres",
                    "-Atc",
                    "SELECT sum(pg_database_size(datname)) FROM pg_database",
                ])
            ).stdout
                .trim()
                .split("\n"),
        ];
        console.error(`seeded ${(Number(dbBytes) / 1e9).toFixed(2)} GB in ${seedSeconds.toFixed(0)} s`);

        // (a) The guide, in its order, with Synapse stopped throughout: pg_dumpall inside the old container, a new
        // 17 container on a new volume, psql -f into it, postgresql.conf copied across and a restart to apply it.
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
            [guideSteps.restore] = await seconds(() =>
                run(
                    "docker",
                    ["exec", "-i", guideNew, "psql", "-q", "-U", "synapse", "-d", "postgres", "-o", "/dev/null"],
                    { stdin: createReadStream(guideFile) },
                ).catch(() => undefined),
            );
            [guideSteps.config] = await seconds(async () => {
                const conf = (await run("docker", ["exec", old, "sh", "-c", 'cat "$PGDATA/postgresql.conf"'])).stdout;
                await run(
                    "docker",
                    ["exec", "-i", "-u", "postgres", guideNew, "sh", "-c", 'cat > "$PGDATA/postgresql.conf"'],
                    { stdin: conf },
                );
                await run("docker", ["restart", guideNew]);
                await waitReady(guideNew);
            });
        });
        const guideSeconds = guideSteps.dump + guideSteps.restore;
        await run("docker", ["rm", "-f", guideNew]);

        // (b) Ours, through the CLI.
        console.error("(b) ours: synapse-pg, default method");
        const staging = `${PREFIX}pg17-staging`;
        const data = `${PREFIX}pgsql17`;
        const rss: Record<string, number> = {};
        const steps: [string, string[]][] = [
            [
                "preflight",
                [
                    "preflight",
                    "--old",
                    old,
                    "--major",
                    "17",
                    "--image",
                    `${IMAGE}:17`,
                    "--data",
                    data,
                    "--backup-dir",
                    backups,
                ],
            ],
            ["dump", ["dump", "--old", old, "--backup-dir", backups, "--name", "ours", "--tool-image", `${IMAGE}:17`]],
            [
                "restore",
                [
                    "restore",
                    "--new",
                    staging,
                    "--image",
                    `${IMAGE}:17`,
                    "--data",
                    data,
                    "--major",
                    "17",
                    "--dump",
                    path.join(backups, "ours"),
                ],
            ],
            ["copy-config", ["copy-config", "--old", old, "--new", staging]],
            ["verify", ["verify", "--old", old, "--new", staging]],
            [
                "cutover",
                ["cutover", "--old", old, "--new", staging, "--data", data, "--image", `${IMAGE}:17`, "--major", "17"],
            ],
        ];
        const timings = await runSteps(steps, rss, "");
        [timings.serve, rss.serve] = await seconds(() => serveNew(`${PREFIX}pg17`, data, 17));
        const oursSeconds = timings.dump + timings.restore;
        const downtimeSeconds = Object.values(timings).reduce((a, b) => a + b, 0);

        // (b') Ours, method pg_upgrade, from the same old cluster (started again: cutover stopped it), and (b)'s
        // new cluster out of the way (a revert would stop it).
        console.error("(b') ours: synapse-pg, method pg_upgrade");
        await run("docker", ["rm", "-f", `${PREFIX}pg17`]);
        await run("docker", ["start", old]);
        await waitReady(old);
        const uStaging = `${PREFIX}pg17u-staging`;
        const uData = `${PREFIX}pgsql17u`;
        const uCluster = ["--new", uStaging, "--image", `${IMAGE}:17`, "--data", uData, "--major", "17"];
        const [prepareSeconds, prepareRss] = await seconds(() => step(["prepare", "--old", old, ...uCluster]));
        rss.prepare = prepareRss;
        const uSteps: [string, string[]][] = [
            [
                "preflight",
                [
                    "preflight",
                    "--old",
                    old,
                    "--major",
                    "17",
                    "--image",
                    `${IMAGE}:17`,
                    "--data",
                    uData,
                    "--new",
                    uStaging,
                ],
            ],
            ["upgrade", ["upgrade", "--old", old, ...uCluster]],
            ["copy-config", ["copy-config", "--old", old, "--new", uStaging]],
            ["verify", ["verify", "--old", old, "--new", uStaging]],
            [
                "cutover",
                [
                    "cutover",
                    "--old",
                    old,
                    "--new",
                    uStaging,
                    "--data",
                    uData,
                    "--image",
                    `${IMAGE}:17`,
                    "--major",
                    "17",
                ],
            ],
        ];
        const uTimings = await runSteps(uSteps, rss, "pg_upgrade ");
        [uTimings.serve, rss["pg_upgrade serve"]] = await seconds(() => serveNew(`${PREFIX}pg17u`, uData, 17));
        const via = /pg_upgrade --link on the standby/.test(said.upgrade ?? "") ? "link on a standby" : "copy";
        const upgradeDowntime = Object.values(uTimings).reduce((a, b) => a + b, 0);

        // (c) The floor: a raw copy of the stopped old cluster's data.
        console.error("(c) the floor: raw copy of the data folder");
        const [floorSeconds] = await seconds(() =>
            run("docker", [
                "run",
                "--rm",
                "-v",
                `${PREFIX}pgsql15:/from`,
                "-v",
                `${PREFIX}raw:/to`,
                "--entrypoint",
                "cp",
                `${IMAGE}:17`,
                "-a",
                "/from/.",
                "/to/",
            ]),
        );

        const result = {
            when: new Date().toISOString(),
            size: sizeText,
            databaseBytes: Number(dbBytes),
            seed,
            machine: { cpus: os.cpus().length, memoryGB: Math.round(os.totalmem() / 1e9) },
            guideSeconds,
            guideDowntimeSeconds,
            guideSteps,
            oursSeconds,
            oursSteps: timings,
            oursDowntimeSeconds: downtimeSeconds,
            pgUpgrade: {
                via,
                prepareSeconds,
                steps: uTimings,
                downtimeSeconds: upgradeDowntime,
                downtimeOverGuide: upgradeDowntime / guideDowntimeSeconds,
                downtimeOverGuideDumpRestore: upgradeDowntime / guideSeconds,
            },
            floorSeconds,
            oursOverGuide: oursSeconds / guideSeconds,
            downtimeOverGuide: downtimeSeconds / guideDowntimeSeconds,
            oursOverFloor: oursSeconds / floorSeconds,
            peakRssMB: Math.max(...Object.values(rss)),
            peakRssMBByStep: rss,
        };
        await fs.mkdir(path.join(REPO, "bench/results"), { recursive: true });
        const out = path.join(REPO, "bench/results", `${result.when.replace(/[:.]/g, "-")}-${sizeText}.json`);
        await fs.writeFile(out, JSON.stringify(result, null, 2) + "\n");
        if (json) {
            console.log(JSON.stringify(result, null, 2));
        } else {
            const f = (n: number) => `${n.toFixed(1)} s`;
            console.log(
                `database: ${(result.databaseBytes / 1e9).toFixed(2)} GB (seed ${seed}), ${result.machine.cpus} CPUs`,
            );
            console.log(`(a) guide, pg_dumpall + psql -f:      ${f(guideSeconds)}`);
            console.log(
                `    guide, whole downtime:            ${f(guideDowntimeSeconds)}   (${Object.entries(guideSteps)
                    .map(([k, v]) => `${k} ${v.toFixed(1)}`)
                    .join(", ")})`,
            );
            console.log(
                `(b) ours, dump + restore:             ${f(oursSeconds)}   (ours/guide ${result.oursOverGuide.toFixed(2)})`,
            );
            console.log(
                `    ours, whole downtime:             ${f(downtimeSeconds)}   (downtime/guide's ${result.downtimeOverGuide.toFixed(2)}; ${Object.entries(
                    timings,
                )
                    .map(([k, v]) => `${k} ${v.toFixed(1)}`)
                    .join(", ")})`,
            );
            console.log(
                `(b') ours, pg_upgrade (${via}), whole downtime: ${f(upgradeDowntime)}   (downtime/guide's ${result.pgUpgrade.downtimeOverGuide.toFixed(2)}, /guide's dump+restore ${result.pgUpgrade.downtimeOverGuideDumpRestore.toFixed(2)}; ${Object.entries(
                    uTimings,
                )
                    .map(([k, v]) => `${k} ${v.toFixed(1)}`)
                    .join(", ")})`,
            );
            console.log(`    before the downtime, prepare:     ${f(prepareSeconds)}`);
            console.log(
                `(c) floor, raw copy of the data:      ${f(floorSeconds)}   (ours/floor ${result.oursOverFloor.toFixed(2)})`,
            );
            console.log(`step runner peak RSS: ${result.peakRssMB.toFixed(0)} MB`);
            console.log(`written to ${path.relative(REPO, out)}`);
        }
    } finally {
        await cleanup();
        await fs.rm(backups, { recursive: true, force: true });
    }
}

main().catch((err) => {
    console.error(err.message);
    process.exit(1);
});
