// The outage a Matrix user sees, with a real Synapse: `npm run bench -- --synapse --size 1GB`.
//
// A real Synapse (synapse-pg-test/synapse) creates its own schema on a 15 cluster; the database is filled to the
// size with bulk rows of its own state_groups_state (what grows on a real homeserver). Then, on the same data and
// while a client sends a message every 0.25 s:
//   (a) the guide: Synapse stopped, pg_dumpall in the old container, the old container stopped, a new 17
//       container under the same name on a new volume, psql -f, postgresql.conf copied and a restart, Synapse
//       started;
//   (b) ours, the default method (pg_upgrade): prepare while Synapse serves, then preflight, upgrade, copy-config,
//       verify, cutover, the serving container and serve, each run as pulumi up runs it (with --synapse, so the
//       steps stop and start Synapse themselves).
// The outage is what the client saw: from its first failed send to the first one that succeeded after it. Ours is
// broken down: until Synapse had stopped, each step, Synapse's start, its first successful request. Every message
// Synapse accepted is then read back through Synapse.
import { createReadStream, createWriteStream, promises as fs } from "node:fs";
import { run } from "../runner/docker/process";
import { MatrixClient, outageOf, SendRecord, startSender, waitForSynapse } from "../tests/fixtures/matrix-client";
import { startSynapseServer } from "../tests/fixtures/synapse-server";
import {
    cleanup,
    IMAGE,
    NETWORK,
    PASSWORD,
    PREFIX,
    REPO,
    said,
    seconds,
    serveNew,
    startCluster,
    step,
    waitReady,
} from "./harness";
import * as os from "node:os";
import * as path from "node:path";

const SYNAPSE = `${PREFIX}synapse`;
const SYNAPSE_PORT = 28018;
const OLD = `${PREFIX}pg15`;

/** Docker's own record of when a container last stopped and started (ms since the epoch). */
async function stateTimes(container: string): Promise<{ finishedAt: number; startedAt: number }> {
    const [finished, started] = (
        await run("docker", ["inspect", "-f", "{{.State.FinishedAt}} {{.State.StartedAt}}", container])
    ).stdout
        .trim()
        .split(" ");
    return { finishedAt: Date.parse(finished), startedAt: Date.parse(started) };
}

async function psql(container: string, sql: string, database = "synapse"): Promise<string> {
    return (
        await run("docker", ["exec", container, "psql", "-X", "-U", "synapse", "-d", database, "-Atqc", sql])
    ).stdout.trim();
}

/**
 * Bulk rows in Synapse's state_groups_state (and their state_groups), 500k rows a round, until the database has
 * the size. Bounded: at most 400 rounds.
 */
async function fill(container: string, bytes: number): Promise<number> {
    let size = Number(await psql(container, "SELECT pg_database_size('synapse')"));
    for (let round = 0; round < 400 && size < bytes; round++) {
        const first = round * 500_000;
        await psql(
            container,
            `
            INSERT INTO state_groups (id, room_id, event_id)
                SELECT 1000000 + g, '!room' || (g % 997) || ':bench.test', '$' || md5('group' || g) FROM generate_series(${first / 50}, ${first / 50 + 9_999}) g;
            INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
                SELECT 1000000 + g / 50, '!room' || ((g / 50) % 997) || ':bench.test',
                       CASE WHEN g % 7 = 0 THEN 'm.room.power_levels' ELSE 'm.room.member' END,
                       '@user' || g || ':bench' || (g % 13) || '.test', '$' || md5(g::text) || 'AbCdEfGhIjK'
                FROM generate_series(${first}, ${first + 499_999}) g;`,
        );
        size = Number(await psql(container, "SELECT pg_database_size('synapse')"));
    }
    await psql(container, "CHECKPOINT", "postgres");
    return size;
}

interface Typed {
    records: SendRecord[];
    t0: number;
}

/** A client typing while `work` runs, until Synapse answers again and two more seconds have passed. */
async function whileTyping(
    client: MatrixClient,
    room: string,
    tag: string,
    work: (t0: number) => Promise<void>,
): Promise<Typed> {
    // Bounded: 4 sends a second for at most 2000 s.
    const sender = startSender(client, room, { intervalMs: 250, timeoutMs: 5000, maxSends: 8000, tag });
    try {
        await new Promise((r) => setTimeout(r, 2000));
        await work(sender.t0);
        await sender.acceptedSince(Date.now() - sender.t0, 300_000);
        await new Promise((r) => setTimeout(r, 2000));
    } catch (err) {
        await sender.stop();
        throw err;
    }
    return { records: await sender.stop(), t0: sender.t0 };
}

export async function benchSynapse(sizeText: string, sizeMB: number, json: boolean): Promise<void> {
    const backups = await fs.mkdtemp(path.join(os.tmpdir(), "synapse-pg-bench-"));
    await cleanup();
    await run("docker", ["rm", "-f", SYNAPSE]).catch(() => undefined);
    await run("docker", ["volume", "rm", "-f", `${SYNAPSE}-data`]).catch(() => undefined);
    await run("docker", ["network", "create", NETWORK]);
    try {
        const setup = await startSynapseOn15(sizeMB);
        const { alice, room } = setup;
        const guide = await guideWithSynapse(alice, room, backups);
        // Back to 15 for ours, on the same data: what the client wrote to 15 before the guide's outage stays, what
        // it wrote to the guide's 17 after it goes with that cluster.
        const accepted = guide.records.filter((r) => r.ok && r.end < guide.outage.to).map((r) => r.body);
        await backTo15(setup.base);
        const ours = await oursWithSynapse(alice, room);
        accepted.push(...ours.records.filter((r) => r.ok).map((r) => r.body));
        // Everything Synapse accepted, read back through Synapse from 17.
        const history = await alice.messages(room);
        const missing = accepted.filter((b) => !history.includes(b));
        if (missing.length)
            throw new Error(
                `${missing.length} accepted message(s) missing after the upgrade: ${missing.slice(0, 5).join(", ")}`,
            );
        const result = {
            when: new Date().toISOString(),
            mode: "synapse",
            size: sizeText,
            databaseBytes: setup.dbBytes,
            synapseSchemaVersion: setup.version,
            machine: { cpus: os.cpus().length, memoryGB: Math.round(os.totalmem() / 1e9) },
            clientIntervalSeconds: 0.25,
            guide: { outageSeconds: guide.outage.seconds, failedSends: guide.outage.failedSends, steps: guide.steps },
            ours: ours.summary,
            outageOverGuide: ours.summary.outageSeconds / guide.outage.seconds,
            messagesAcceptedAndReadBack: accepted.length,
        };
        await fs.mkdir(path.join(REPO, "bench/results"), { recursive: true });
        const out = path.join(REPO, "bench/results", `${result.when.replace(/[:.]/g, "-")}-synapse-${sizeText}.json`);
        await fs.writeFile(out, JSON.stringify(result, null, 2) + "\n");
        if (json) return console.log(JSON.stringify(result, null, 2));
        printSynapseResult(result, out);
    } finally {
        await run("docker", ["rm", "-f", SYNAPSE]).catch(() => undefined);
        await run("docker", ["volume", "rm", "-f", `${SYNAPSE}-data`]).catch(() => undefined);
        await cleanup();
        await fs.rm(backups, { recursive: true, force: true });
    }
}

/** 15 with a real Synapse on it, a user and a room, the database filled to the asked size. */
async function startSynapseOn15(sizeMB: number) {
    await startCluster(OLD, 15, `${PREFIX}pgsql15`, true);
    const server = await startSynapseServer({
        container: SYNAPSE,
        network: NETWORK,
        dbHost: "db",
        dbUser: "synapse",
        dbName: "synapse",
        dbPassword: PASSWORD,
        port: SYNAPSE_PORT,
    });
    const alice = await MatrixClient.register(server.base, "alice", "bench-user-password");
    const room = await alice.createRoom("bench");
    const [fillSeconds, dbBytes] = await seconds(() => fill(OLD, sizeMB * 1e6));
    const version = await psql(OLD, "SELECT max(version) FROM schema_version").catch(() => "?");
    console.error(
        `real Synapse schema (version ${version}), filled to ${(dbBytes / 1e9).toFixed(2)} GB in ${fillSeconds.toFixed(0)} s`,
    );
    return { base: server.base, alice, room, dbBytes, version };
}

/** (a) The guide, by hand, as its reader would type it, while the client sends. */
async function guideWithSynapse(alice: MatrixClient, room: string, backups: string) {
    console.error(
        "(a) the guide: stop Synapse; pg_dumpall; stop 15; new 17 as db; psql -f; copy postgresql.conf; restart; start Synapse",
    );
    const guideNew = `${PREFIX}guide-pg17`;
    const guideFile = path.join(backups, "guide.sql");
    const steps: Record<string, number> = {};
    const typed = await whileTyping(alice, room, "guide", async () => {
        [steps.stopSynapse] = await seconds(() => run("docker", ["stop", "--time", "60", SYNAPSE]));
        [steps.dump] = await seconds(() =>
            run("docker", ["exec", OLD, "pg_dumpall", "-U", "synapse"], { stdout: createWriteStream(guideFile) }),
        );
        [steps.stopOld] = await seconds(() => run("docker", ["stop", OLD]));
        [steps.start] = await seconds(() => startCluster(guideNew, 17, `${PREFIX}guide-pgsql17`, true));
        const load = ["exec", "-i", guideNew, "psql", "-q", "-U", "synapse", "-d", "postgres", "-o", "/dev/null"];
        [steps.restore] = await seconds(() =>
            run("docker", load, { stdin: createReadStream(guideFile) }).catch(() => undefined),
        );
        [steps.config] = await seconds(async () => {
            const read = ["exec", OLD, "sh", "-c", 'cat "$PGDATA/postgresql.conf"'];
            const conf = (await run("docker", read).catch(() => ({ stdout: "" }))).stdout;
            const write = ["exec", "-i", "-u", "postgres", guideNew, "sh", "-c", 'cat > "$PGDATA/postgresql.conf"'];
            if (conf) await run("docker", write, { stdin: conf });
            await run("docker", ["restart", guideNew]);
            await waitReady(guideNew);
        });
        [steps.startSynapse] = await seconds(() => run("docker", ["start", SYNAPSE]));
    });
    await run("docker", ["stop", "--time", "60", SYNAPSE]);
    await run("docker", ["rm", "-f", guideNew]);
    return { records: typed.records, outage: outageOf(typed.records)!, steps };
}

async function backTo15(base: string): Promise<void> {
    await run("docker", ["start", OLD]);
    await waitReady(OLD);
    await run("docker", ["start", SYNAPSE]);
    await waitForSynapse(base, 300);
}

/** (b) Ours: the default method, pg_upgrade; prepare while Synapse serves, then the downtime steps with --synapse. */
async function oursWithSynapse(alice: MatrixClient, room: string) {
    console.error("(b) ours: prepare (Synapse serving), then the downtime steps with --synapse");
    const staging = `${PREFIX}pg17-staging`;
    const data = `${PREFIX}pgsql17`;
    const cluster = ["--image", `${IMAGE}:17`, "--data", data, "--major", "17"];
    const [prepareSeconds] = await seconds(() => step(["prepare", "--old", OLD, "--new", staging, ...cluster]));
    const both = ["--old", OLD, "--new", staging, "--synapse", SYNAPSE];
    const marks: Mark[] = [];
    const typed = await whileTyping(alice, room, "ours", async (t0) => {
        const timed = async (name: string, work: () => Promise<unknown>) => {
            const start = Date.now() - t0;
            await work();
            marks.push({ step: name, start, end: Date.now() - t0 });
        };
        await timed("preflight", () => step(["preflight", ...both, ...cluster]));
        await timed("upgrade", () => step(["upgrade", ...both, ...cluster]));
        await timed("copy-config", () => step(["copy-config", ...both]));
        await timed("verify", () => step(["verify", ...both]));
        await timed("cutover", () => step(["cutover", ...both, ...cluster]));
        await timed("serving container and serve", () => serveNew(`${PREFIX}pg17`, data, 17, SYNAPSE));
    });
    const outage = outageOf(typed.records)!;
    const summary = {
        method: "pg_upgrade",
        via: /pg_upgrade --link on the standby/.test(said.upgrade ?? "") ? "link on a standby" : "copy",
        carried: /^upgrade: (set \d+ sequence.*)$/m.exec(said.upgrade ?? "")?.[1],
        prepareSeconds,
        outageSeconds: outage.seconds,
        failedSends: outage.failedSends,
        steps: Object.fromEntries(marks.map((m) => [m.step, (m.end - m.start) / 1000])),
        breakdown: breakdownOf(marks, typed.t0, outage, await stateTimes(SYNAPSE)),
    };
    return { records: typed.records, summary };
}

type Mark = { step: string; start: number; end: number };

/** Where the client's outage went: until Synapse stopped, each step, and Synapse's start to its first success. */
function breakdownOf(
    marks: Mark[],
    t0: number,
    outage: { from: number; to: number },
    synapse: { startedAt: number; finishedAt: number },
): Record<string, number> {
    const at = (ms: number) => (ms - t0) / 1000;
    const breakdown: Record<string, number> = { "until Synapse stopped": at(synapse.finishedAt) - outage.from / 1000 };
    for (const m of marks) breakdown[m.step] = (m.end - m.start) / 1000;
    // Preflight's own work, without the Synapse stop it starts with.
    breakdown.preflight -= at(synapse.finishedAt) - marks[0].start / 1000;
    breakdown["Synapse start to its first successful request"] = outage.to / 1000 - at(synapse.startedAt);
    return breakdown;
}

function printSynapseResult(
    r: {
        databaseBytes: number;
        synapseSchemaVersion: string;
        machine: { cpus: number };
        guide: { outageSeconds: number; steps: Record<string, number> };
        ours: {
            via: string;
            carried?: string;
            prepareSeconds: number;
            outageSeconds: number;
            breakdown: Record<string, number>;
        };
        outageOverGuide: number;
        messagesAcceptedAndReadBack: number;
    },
    out: string,
): void {
    const f = (n: number) => `${n.toFixed(1)} s`;
    const list = (t: Record<string, number>) =>
        Object.entries(t)
            .map(([k, v]) => `${k} ${v.toFixed(1)}`)
            .join(", ");
    console.log(
        `real Synapse (schema ${r.synapseSchemaVersion}), database ${(r.databaseBytes / 1e9).toFixed(2)} GB, a message every 0.25 s, ${r.machine.cpus} CPUs`,
    );
    console.log(`(a) guide, outage seen by the client: ${f(r.guide.outageSeconds)}   (${list(r.guide.steps)})`);
    console.log(
        `(b) ours (pg_upgrade, ${r.ours.via}), outage: ${f(r.ours.outageSeconds)}   (ours/guide ${r.outageOverGuide.toFixed(2)})`,
    );
    console.log(`    where it goes: ${list(r.ours.breakdown)}`);
    if (r.ours.carried) console.log(`    upgrade: ${r.ours.carried}`);
    console.log(`    before the outage, prepare: ${f(r.ours.prepareSeconds)}`);
    console.log(`every one of ${r.messagesAcceptedAndReadBack} accepted messages read back through Synapse`);
    console.log(`written to ${path.relative(REPO, out)}`);
}
