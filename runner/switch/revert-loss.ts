// What a revert would lose: the events Synapse wrote to the newer cluster after the switch. The usual reason to
// revert is a newer cluster that crashed or was stopped, so it is counted whether it runs or not: a stopped one in
// a throwaway container on its data, with no network. A count that cannot be made refuses the revert; it is never
// taken as zero.
import { ContainerInfo, pgdataOf, stopContainer, superuserOf } from "../docker/containers";
import { query, waitUntilAccepting } from "../docker/psql";
import { run } from "../docker/process";
import { Marker, readMarkerIn, readMarkerInData } from "../target/markers";
import { ROLE_LABEL, ourLabels } from "../names";

export interface RevertLoss {
    /** Whether a cluster being left served Synapse after an upgrade (then one-time keys are cleared). */
    served: boolean;
    lost: number;
    from: string;
    at: string;
    source?: Marker["source"];
    /** Why the events could not be counted, when they could not. */
    uncounted?: string;
}

const NONE: RevertLoss = { served: false, lost: 0, from: "", at: "" };

/** Of the clusters being left (running or not), the first that served after an upgrade: its events since the switch. */
export async function eventsWrittenSinceSwitch(peers: ContainerInfo[]): Promise<RevertLoss> {
    for (const peer of peers) {
        let marker: Marker | undefined;
        try {
            marker = await readMarker(peer);
        } catch (err) {
            return {
                ...NONE,
                served: true,
                from: peer.name,
                uncounted: `its upgrade marker cannot be read (${firstLine(err)})`,
            };
        }
        if (!marker || (marker.state !== "serving" && marker.state !== "cutover")) continue;
        const since = marker.switchedAt;
        const found = { served: true, from: peer.name, source: marker.source };
        if (!since) return { ...found, lost: 0, at: "" };
        const sql = `SELECT count(*) FROM public.events WHERE stream_ordering > ${Number(since.eventsStreamOrdering)}`;
        try {
            const [[n]] = peer.running
                ? await query(peer.name, superuserOf(peer), sql, since.database)
                : await queryOffline(peer, sql, since.database);
            return { ...found, lost: Number(n), at: since.at };
        } catch (err) {
            return { ...found, lost: 0, at: since.at, uncounted: `its events cannot be counted (${firstLine(err)})` };
        }
    }
    return NONE;
}

/** The marker in the cluster's data, read through its server when it runs, from its file system when not. */
async function readMarker(peer: ContainerInfo): Promise<Marker | undefined> {
    return peer.running ? readMarkerIn(peer.name, superuserOf(peer)) : readMarkerInData(peer.name, pgdataOf(peer));
}

/**
 * One query on a stopped cluster's data: its image, started in a container of ours with its volumes and no
 * network, so it cannot answer to the alias; stopped cleanly and removed afterwards. A crashed cluster recovers
 * here as it would at its own next start.
 */
async function queryOffline(peer: ContainerInfo, sql: string, database: string): Promise<string[][]> {
    const name = `${peer.name}-count`;
    const user = superuserOf(peer);
    await removeOurCounter(name);
    await run("docker", [
        "run",
        "-d",
        "--name",
        name,
        ...ourLabels("count"),
        "--network",
        "none",
        "--volumes-from",
        peer.name,
        "-e",
        `PGDATA=${pgdataOf(peer)}`,
        "-e",
        `POSTGRES_USER=${user}`,
        "--stop-signal",
        "SIGINT",
        peer.imageId,
        "postgres",
    ]);
    try {
        await waitUntilAccepting(name, user, 120);
        return await query(name, user, sql, database);
    } finally {
        await stopContainer(name).catch(() => undefined);
        await removeOurCounter(name);
    }
}

/** A counting container a killed run left, removed only when it carries our label and role. */
async function removeOurCounter(name: string): Promise<void> {
    const { stdout } = await run("docker", [
        "ps",
        "-aq",
        "--filter",
        `name=^${name}$`,
        "--filter",
        `label=${ROLE_LABEL}=count`,
    ]);
    if (stdout.trim()) await run("docker", ["rm", "--force", stdout.trim()]);
}

function firstLine(err: unknown): string {
    return ((err as Error).message ?? String(err)).trim().split("\n")[0].replace(/[.:]$/, "");
}
