// serve: makes one cluster the one Synapse reaches. Declared by Pulumi for the serving cluster only, so a revert
// (the earlier stack config again) declares it anew for the old cluster and runs it: the other cluster of ours
// that answers to the alias is stopped cleanly first, so Synapse never sees two servers under one name.
import { inspectContainer, MANAGED_LABEL, query, startContainer, stopContainer, superuserOf, waitUntilAccepting, serverVersion } from "./docker";
import { run } from "./process";
import { removeStandbysOf } from "./standby";
import { StepError } from "./step-error";
import { startSynapse, stopSynapse } from "./synapse";
import { advanceMarker, Marker, readMarkerIn, writeMarkerIn } from "./target";

export interface ServeInput {
    container: string;
    network: string;
    alias: string;
    /** Synapse's containers: stopped before a switch, started once this cluster serves. */
    synapse?: string[];
    /** Synapse's database (default synapse): checked for events a revert would lose. */
    database?: string;
    /** Events the user accepts to lose by reverting (postgres:revertAcceptLoss). */
    acceptLoss?: number;
}

export interface ServeResult {
    started: boolean;
    stoppedOthers: string[];
    version: string;
    synapseStarted: string[];
    /** One-time keys removed from this cluster after a revert (Synapse's advice after going back to older data). */
    oneTimeKeysCleared?: number;
    eventsLost?: number;
    /** Standbys an upgrade that never switched left following this cluster (method pg_upgrade), now removed. */
    standbysRemoved: string[];
}

export async function serveCluster(input: ServeInput): Promise<ServeResult> {
    const info = await inspectContainer(input.container);
    if (!info) throw new StepError(`The container "${input.container}" does not exist; run pulumi up to create it.`);
    if (!info.networks[input.network]?.aliases.includes(input.alias)) {
        throw new StepError(`The container "${input.container}" is not on network "${input.network}" with alias "${input.alias}".`);
    }
    const others = (await holdersOf(input.network, input.alias)).filter((o) => o.name !== input.container);
    for (const other of others) {
        if (other.labels[MANAGED_LABEL] !== "true") {
            throw new StepError(`The container "${other.name}", which synapse-postgres does not manage, also answers to "${input.alias}" on "${input.network}"; stop it so Synapse reaches only one server.`);
        }
    }
    // Only a real switch (a revert) stops Synapse: it must not write to the cluster that is being left.
    if (others.length > 0 || !info.running) await stopSynapse(input.synapse ?? []);
    const leaving = await eventsWrittenSinceSwitch(others);
    if (leaving.source?.container === input.container && leaving.source.imageId && leaving.source.imageId !== info.imageId) {
        // The data was written by that image; another build of the same major may sort text differently (a new
        // C library), which silently breaks indexes. The old data stays untouched until the right image runs.
        if (info.running) await stopContainer(input.container); // it must not answer to the alias beside the newer one
        await startSynapse(input.synapse ?? []);
        const pin = leaving.source.pinned ?? leaving.source.imageId;
        throw new StepError(
            `The revert to "${input.container}" would run image ${info.image} (${info.imageId.slice(0, 19)}), not the image that wrote its data before the upgrade (${pin}); set postgres:image to ${pin} and run pulumi up again.`,
        );
    }
    if (leaving.lost > (input.acceptLoss ?? 0)) {
        await startSynapse(input.synapse ?? []);
        throw new StepError(
            `Going back to "${input.container}" would lose ${leaving.lost} event(s) written to "${leaving.from}" since the switch at ${leaving.at}; to accept that, set postgres:revertAcceptLoss ${leaving.lost} and run pulumi up again (those events stay in "${leaving.from}", which is kept).`,
        );
    }
    const stoppedOthers: string[] = [];
    for (const other of others) {
        await stopContainer(other.name);
        stoppedOthers.push(other.name);
    }
    const started = !info.running;
    if (started) await startContainer(input.container);
    const user = superuserOf(info);
    // Only this cluster answers to the alias now. Synapse spends seconds importing before it first connects, so it
    // starts beside the server's own start, unless one-time keys must be cleared before it runs (a revert that
    // loses events). One that tried too early and exited is started again below, once the server accepts.
    const clearKeys = leaving.served && leaving.lost > 0;
    const startedEarly = clearKeys ? [] : await startSynapse(input.synapse ?? []);
    await waitUntilAccepting(input.container, user);
    // Side by side (at a switch Synapse is down until the end of this step).
    const [marker, { text: version }, standbysRemoved] = await Promise.all([
        readMarkerIn(input.container, user),
        serverVersion(input.container, user),
        removeStandbysOf(input.container),
    ]);
    if (marker && marker.state === "cutover") {
        await Promise.all([
            writeMarkerIn(input.container, user, advanceMarker(marker, "serving")),
            // pg_upgrade before 18 carries no statistics; the upgrade gathered a quick first stage. The full
            // ANALYZE runs now, in the background, while Synapse works (pg_upgrade's own advice).
            marker.method === "pg_upgrade" && marker.major < 18
                ? run("docker", ["exec", "-d", input.container, "vacuumdb", "-U", user, "--all", "--analyze-only", "--quiet"])
                : undefined,
        ]);
    }
    let oneTimeKeysCleared: number | undefined;
    if (clearKeys) {
        // Synapse's backup advice: after going back to older data, clients may hold one-time keys the older data
        // still lists as unclaimed; clear them before Synapse starts, so they are uploaded afresh. Only when
        // Synapse's stream moved past the old cluster: a revert without writes leaves the old data exactly as it was.
        const db = input.database ?? "synapse";
        const rows = await query(input.container, user,
            "WITH gone AS (DELETE FROM e2e_one_time_keys_json RETURNING 1) SELECT count(*) FROM gone", db).catch(() => [["0"]]);
        oneTimeKeysCleared = Number(rows[0][0]);
    }
    const synapseStarted = [...new Set([...startedEarly, ...(await startSynapse(input.synapse ?? []))])];
    return { started, stoppedOthers, version, synapseStarted, oneTimeKeysCleared, eventsLost: oneTimeKeysCleared === undefined ? undefined : leaving.lost, standbysRemoved };
}

/**
 * For a revert: of the clusters about to be stopped, one that served Synapse after an upgrade (its marker says so)
 * may hold events the older cluster lacks: those after the stream position recorded at the switch.
 */
async function eventsWrittenSinceSwitch(others: { name: string; env: Record<string, string> }[]) {
    for (const other of others) {
        const user = other.env.POSTGRES_USER || "postgres";
        const marker = await readMarkerIn(other.name, user).catch(() => undefined);
        if (!marker || (marker.state !== "serving" && marker.state !== "cutover")) continue;
        const since = marker.switchedAt;
        if (!since) return { served: true, lost: 0, from: other.name, at: "", source: marker.source };
        const [[n]] = await query(other.name, user, `SELECT count(*) FROM public.events WHERE stream_ordering > ${Number(since.eventsStreamOrdering)}`, since.database);
        return { served: true, lost: Number(n), from: other.name, at: since.at, source: marker.source };
    }
    return { served: false, lost: 0, from: "", at: "", source: undefined as Marker["source"] | undefined };
}

/** Running containers on the network that answer to the alias. */
async function holdersOf(network: string, alias: string) {
    const { stdout } = await run("docker", ["network", "inspect", "--format", "{{range $id, $c := .Containers}}{{$c.Name}}\n{{end}}", network]).catch(() => {
        throw new StepError(`The Docker network "${network}" does not exist; create it or set postgres:network to the one Synapse uses.`);
    });
    const holders = [];
    for (const name of stdout.split("\n").filter(Boolean)) {
        const c = await inspectContainer(name);
        if (c?.running && c.networks[network]?.aliases.includes(alias)) holders.push(c);
    }
    return holders;
}
