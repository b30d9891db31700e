// The write fence. From the moment the new cluster's copy of the old data is taken until the switch, the old
// cluster must take no write from anyone, or the switch would drop it. Synapse is stopped by then, but a worker
// nobody listed, a bridge, or a container a watchdog restarts could still connect. So at the copy point the old
// container leaves every Docker network and every other client session is ended. Our own steps reach it with
// docker exec and from inside its network namespace (the dump's tools, the standby), which the fence leaves alone.
//
// What the fence took away is recorded in stopped containers of ours (<old>-fence-<n>, labelled with the networks
// and their aliases), written before anything is disconnected, so a failure, a kill, the switch or a revert can put
// the networks back. A step that fails before the switch lifts the fence and says so; cutover checks, with the
// fence up again, that the old cluster took no write since the copy point (its write horizon, below), and puts the
// networks back on the stopped old container so a revert finds it as it was.
import { ContainerInfo, inspectContainer } from "../docker/containers";
import { query, queryEachDatabase } from "../docker/psql";
import { sleep } from "../host";
import { run } from "../docker/process";
import { StepError } from "../step-error";
import { FENCE_NETWORKS_LABEL, FENCE_OF_LABEL, ourLabels } from "../names";

/** On a fence record: the container it fenced. */
/** On a fence record: the networks taken away, as JSON (FencedNetwork[]). */

export interface FencedNetwork {
    name: string;
    aliases: string[];
    /** A static address (compose's ipv4_address), given again on reconnect. */
    ip?: string;
}

/**
 * Where the old cluster's writes stood, per database: rows inserted, updated and deleted in user tables (the
 * statistics' counters, which autovacuum and autoanalyze leave alone), a digest of the user tables with their
 * files (a TRUNCATE, CREATE or DROP changes it) and counters, and a digest of the sequences' values.
 */
export type WriteHorizon = Record<string, { rows: number; tables: string; sequences: string }>;

/** The copy point: recorded with the copy (the dump's manifest, then the marker; or pg_upgrade's marker). */
export interface CopyPoint {
    at: string;
    horizon: WriteHorizon;
}

export interface Fence {
    /** Networks the container left now (empty when the fence was already up). */
    disconnected: string[];
    /** Client sessions ended. */
    ended: number;
}

/** A container on the host's network (or another container's) cannot be taken off it: refused before the downtime. */
export function requireFenceable(old: ContainerInfo): void {
    if (old.networkMode !== "host" && !old.networkMode.startsWith("container:")) return;
    throw new StepError(
        `The old container "${old.name}" uses ${old.networkMode === "host" ? "the host's network" : `the network of ${old.networkMode.slice("container:".length)}`}, so nothing could keep other clients from writing to it while the new cluster is made, and what they wrote would be lost; put it on a Docker network that Synapse uses (docker compose does) and run pulumi up again.`,
    );
}

/**
 * Raises the fence (again: every part is idempotent) and returns once no other client session is left. A
 * stopped container is only taken off its networks, so it starts fenced.
 */
export async function raiseFence(old: ContainerInfo, superuser: string): Promise<Fence> {
    requireFenceable(old);
    const records = await fenceRecords(old.name);
    const recorded = new Set(records.flatMap((r) => r.networks.map((n) => n.name)));
    const current = Object.entries(old.networks).map(([name, n]) => ({
        name,
        aliases: n.aliases,
        ip: n.staticIp,
    }));
    const unrecorded = current.filter((n) => !recorded.has(n.name));
    // Recorded first: a kill after a disconnect must still find what to put back.
    if (unrecorded.length)
        await writeFenceRecord(
            old,
            records.map((r) => r.name),
            unrecorded,
        );
    for (const n of current) {
        await run("docker", ["network", "disconnect", n.name, old.name]).catch((err: Error) => {
            if (!/is not connected/.test(err.message)) throw err;
        });
    }
    const ended = old.running ? await endOtherSessions(old.name, superuser) : 0;
    return { disconnected: current.map((n) => n.name), ended };
}

/**
 * Puts back the networks the fence took away and removes its records; works on a stopped container too. Returns
 * the networks reconnected, or undefined when there was no fence.
 */
export async function liftFence(container: string): Promise<string[] | undefined> {
    const records = await fenceRecords(container);
    if (records.length === 0) return undefined;
    const info = await inspectContainer(container);
    if (!info)
        throw new StepError(
            `The old container "${container}" is gone, so the networks the upgrade took it off cannot be given back.`,
        );
    const reconnected: string[] = [];
    for (const n of records.flatMap((r) => r.networks)) {
        if (info.networks[n.name] || reconnected.includes(n.name)) continue;
        const aliases = n.aliases.flatMap((a) => ["--alias", a]);
        await run("docker", [
            "network",
            "connect",
            ...aliases,
            ...(n.ip ? ["--ip", n.ip] : []),
            n.name,
            container,
        ]).catch((err: Error) => {
            throw new StepError(
                `The old container "${container}" could not be put back on the Docker network "${n.name}" (${err.message.trim().split("\n").pop()}); reconnect it with docker network connect${n.aliases.map((a) => ` --alias ${a}`).join("")} ${n.name} ${container} and run pulumi up again.`,
            );
        });
        reconnected.push(n.name);
    }
    await run("docker", ["rm", "--force", ...records.map((r) => r.name)]);
    return reconnected;
}

async function fenceRecords(container: string): Promise<{ name: string; networks: FencedNetwork[] }[]> {
    const { stdout } = await run("docker", [
        "ps",
        "-a",
        "--filter",
        `label=${FENCE_OF_LABEL}=${container}`,
        "--format",
        `{{.Names}}\t{{.Label "${FENCE_NETWORKS_LABEL}"}}`,
    ]);
    return stdout
        .split("\n")
        .filter(Boolean)
        .map((line) => {
            const [name, json] = line.split("\t");
            return { name, networks: JSON.parse(json) as FencedNetwork[] };
        });
}

async function writeFenceRecord(old: ContainerInfo, taken: string[], networks: FencedNetwork[]): Promise<void> {
    let n = taken.length + 1;
    while (taken.includes(`${old.name}-fence-${n}`)) n++;
    await run("docker", [
        "create",
        "--name",
        `${old.name}-fence-${n}`,
        "--network",
        "none",
        "--restart",
        "no",
        ...ourLabels("fence"),
        "--label",
        `${FENCE_OF_LABEL}=${old.name}`,
        "--label",
        `${FENCE_NETWORKS_LABEL}=${JSON.stringify(networks)}`,
        "--entrypoint",
        "true",
        old.imageId,
    ]);
}

/** Sessions that were already connected; bounded, for a client that keeps connecting from inside the container. */
async function endOtherSessions(container: string, superuser: string): Promise<number> {
    let ended = 0;
    for (let round = 0; round < 40; round++) {
        const [[signalled, left]] = await query(
            container,
            superuser,
            `SELECT count(pg_terminate_backend(pid)) FILTER (WHERE pid <> pg_backend_pid()), count(*) - 1
               FROM pg_stat_activity WHERE backend_type = 'client backend'`,
        );
        if (Number(left) === 0) {
            // Before 15 an ended session's last counters reach the statistics collector a moment later.
            if (ended > 0) await sleep(1000);
            return ended;
        }
        ended += Number(signalled);
        await sleep(250);
    }
    throw new StepError(
        `Client sessions keep connecting to "${container}" from inside its container although it is off every network; stop whatever runs there (docker exec) and run pulumi up again.`,
    );
}

const HORIZON_SQL = `
SELECT coalesce(sum(s.n_tup_ins + s.n_tup_upd + s.n_tup_del), 0),
       md5(coalesce(string_agg(concat_ws(':', s.relid, c.relfilenode, s.n_tup_ins, s.n_tup_upd, s.n_tup_del), ',' ORDER BY s.relid), '')),
       md5(coalesce((SELECT string_agg(concat_ws(':', schemaname, sequencename, last_value), ',' ORDER BY schemaname, sequencename) FROM pg_sequences), ''))
  FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
 WHERE s.schemaname NOT LIKE 'pg\\_temp\\_%'`;

/** Every database's horizon; one that cannot be read refuses (queryEachDatabase), since its writes could not be told. */
export async function readWriteHorizon(container: string, superuser: string): Promise<WriteHorizon> {
    const horizon: WriteHorizon = {};
    for (const {
        database,
        rows: [[rows, tables, sequences]],
    } of await queryEachDatabase(container, superuser, HORIZON_SQL)) {
        horizon[database] = { rows: Number(rows), tables, sequences };
    }
    return horizon;
}

/** What changed between two horizons, one phrase each; empty when nothing did. */
export function horizonChanges(before: WriteHorizon, now: WriteHorizon): string[] {
    const changes: string[] = [];
    for (const db of new Set([...Object.keys(before), ...Object.keys(now)])) {
        const [b, n] = [before[db], now[db]];
        if (!n) changes.push(`database ${db} is gone`);
        else if (!b) changes.push(`database ${db} was created`);
        else if (n.rows < b.rows)
            changes.push(
                `database ${db}'s write statistics were reset (a crash or pg_stat_reset), so its writes cannot be counted`,
            );
        else {
            if (n.rows > b.rows)
                changes.push(`${n.rows - b.rows} row(s) inserted, updated or deleted in database ${db}`);
            else if (n.tables !== b.tables)
                changes.push(`tables created, dropped, truncated or rewritten in database ${db}`);
            if (n.sequences !== b.sequences) changes.push(`sequences advanced in database ${db}`);
        }
    }
    return changes;
}

/** Refuses the switch when the old cluster took a write after the copy point: `now` is read under the fence. */
export function requireNoWritesSince(copyPoint: CopyPoint | undefined, container: string, now: WriteHorizon): void {
    if (!copyPoint) {
        throw new StepError(
            `The new cluster's copy records no write horizon of "${container}" (an earlier version of synapse-postgres made it), so the switch cannot check that nothing was written since; run pulumi config set postgres:attempt <the next number> and pulumi up for a fresh copy.`,
        );
    }
    const changes = horizonChanges(copyPoint.horizon, now);
    if (changes.length === 0) return;
    throw new StepError(
        `The old cluster "${container}" took writes after the new cluster's copy was taken (${copyPoint.at}): ${changes.slice(0, 3).join("; ")}; the copy lacks them, so the switch will not happen; run pulumi config set postgres:attempt <the next number> and pulumi up for a fresh copy.`,
    );
}

/** Raises the fence and reads the horizon under it: the copy point, taken just before the copy starts. */
export async function takeCopyPoint(
    old: ContainerInfo,
    superuser: string,
): Promise<{ fence: Fence; copyPoint: CopyPoint }> {
    const fence = await raiseFence(old, superuser);
    return { fence, copyPoint: { at: new Date().toISOString(), horizon: await readWriteHorizon(old.name, superuser) } };
}

/** "took it off net1 and net2, ended 2 client session(s)" or "" when the fence was already up. */
export function describeFence(f: Fence): string {
    const parts = [];
    if (f.disconnected.length)
        parts.push(`took it off the network${f.disconnected.length > 1 ? "s" : ""} ${f.disconnected.join(", ")}`);
    if (f.ended) parts.push(`ended ${f.ended} client session(s)`);
    return parts.join(", ");
}
