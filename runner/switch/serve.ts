// serve: makes one cluster the one Synapse reaches. Declared by Pulumi for the serving cluster only, so a revert
// (the earlier stack config again) declares it anew for the old cluster and runs it: the other cluster of ours
// that answers to the alias is stopped cleanly first, so Synapse never sees two servers under one name.
import { ContainerInfo, inspectContainer, startContainer, stopContainer, superuserOf } from "../docker/containers";
import { query, waitUntilAccepting, serverVersion } from "../docker/psql";
import { run } from "../docker/process";
import { liftFence } from "./fence";
import { applyDeclaredPassword } from "../checks/password";
import { ExtensionUpdate, updateExtensions } from "../checks/extensions";
import { eventsWrittenSinceSwitch, RevertLoss } from "./revert-loss";
import { removeStandbysOf } from "../pg-upgrade/standby";
import { StepError } from "../step-error";
import { startSynapse, stopSynapse } from "./synapse";
import { advanceMarker, Marker, readMarkerIn, writeMarkerIn } from "../target/markers";
import { CLUSTER_LABEL, MANAGED_LABEL } from "../names";

export interface ServeInput {
    container: string;
    network: string;
    alias: string;
    /** Synapse's containers: stopped before a switch, started once this cluster serves. */
    synapse?: string[];
    /** Synapse's database (default synapse): checked for events a revert would lose. */
    database?: string;
    /** Events the user accepts to lose by reverting (postgres:revertAcceptLoss); "any" also when they cannot be counted. */
    acceptLoss?: number | "any";
}

export interface ServeResult {
    started: boolean;
    stoppedOthers: string[];
    version: string;
    synapseStarted: string[];
    /** One-time keys removed from this cluster after a revert (Synapse's advice after going back to older data). */
    oneTimeKeysCleared?: number;
    /** Events left behind in the newer cluster by a revert; "uncounted" when they could not be counted. */
    eventsLost?: number | "uncounted";
    /** Standbys an upgrade that never switched left following this cluster (method pg_upgrade), now removed. */
    standbysRemoved: string[];
    /** The networks given back to this cluster, fenced by an upgrade that never switched (fence.ts). */
    fenceLifted?: string[];
    /** The role whose password was set to postgres:password, which it did not log in with (password.ts). */
    passwordSet?: string;
    /** After pg_upgrade: extensions updated to the new image's versions, and those that could not be. */
    extensions?: { updated: ExtensionUpdate[]; failed: string[] };
}

export async function serveCluster(input: ServeInput): Promise<ServeResult> {
    const { info, fenceLifted, others } = await findHolders(input);
    // Only a real switch (a revert) stops Synapse: it must not write to the cluster that is being left.
    if (others.length > 0 || !info.running) await stopSynapse(input.synapse ?? []);
    // Stopped clusters of ours under the alias count too: a revert usually leaves a newer cluster that crashed.
    const leaving = await eventsWrittenSinceSwitch([...others, ...(await stoppedPeers(input, info))]);
    const refusal = revertRefusal(input, info, leaving);
    if (refusal) {
        // Refused: this cluster must not answer to the alias (Pulumi creates clusters stopped, but someone may
        // have started it by hand), and Synapse goes back to what it had.
        if (info.running) await stopContainer(input.container);
        await startSynapse(input.synapse ?? []);
        throw new StepError(refusal);
    }
    for (const other of others) await stopContainer(other.name);
    const started = !info.running;
    if (started) await startContainer(input.container);
    const user = superuserOf(info);
    // Only this cluster answers to the alias now. Synapse spends seconds importing before it first connects, so it
    // starts beside the server's own start, unless one-time keys must be cleared before it runs (a revert that
    // loses events). One that tried too early and exited is started again below, once the server accepts.
    const clearKeys = leaving.served && (leaving.lost > 0 || leaving.uncounted !== undefined);
    const startedEarly = clearKeys ? [] : await startSynapse(input.synapse ?? []);
    await waitUntilAccepting(input.container, user);
    // Side by side (at a switch Synapse is down until the end of this step).
    const [marker, { text: version }, standbysRemoved, passwordSet] = await Promise.all([
        readMarkerIn(input.container, user),
        serverVersion(input.container, user),
        removeStandbysOf(input.container),
        applyDeclaredPassword(input.container, input.database ?? "synapse"),
    ]);
    const extensions = marker?.state === "cutover" ? await firstServe(input.container, user, marker) : undefined;
    const oneTimeKeysCleared = clearKeys ? await clearOneTimeKeys(input, user) : undefined;
    const synapseStarted = [...new Set([...startedEarly, ...(await startSynapse(input.synapse ?? []))])];
    const eventsLost = oneTimeKeysCleared === undefined ? undefined : leaving.uncounted ? "uncounted" : leaving.lost;
    const stoppedOthers = others.map((o) => o.name);
    return {
        started,
        stoppedOthers,
        version,
        synapseStarted,
        oneTimeKeysCleared,
        eventsLost,
        standbysRemoved,
        fenceLifted,
        passwordSet,
        extensions,
    };
}

/** This cluster, its fence lifted, on the alias; the others that answer to it, which must all be ours. */
async function findHolders(
    input: ServeInput,
): Promise<{ info: ContainerInfo; fenceLifted?: string[]; others: ContainerInfo[] }> {
    let info = await inspectContainer(input.container);
    if (!info) throw new StepError(`The container "${input.container}" does not exist; run pulumi up to create it.`);
    // An upgrade given up (or killed) before its switch may have left this cluster fenced: its networks come back.
    const fenceLifted = await liftFence(input.container);
    if (fenceLifted !== undefined) info = (await inspectContainer(input.container))!;
    if (!info.networks[input.network]?.aliases.includes(input.alias)) {
        throw new StepError(
            `The container "${input.container}" is not on network "${input.network}" with alias "${input.alias}".`,
        );
    }
    const others = (await holdersOf(input.network, input.alias)).filter((o) => o.name !== input.container);
    const foreign = others.find((o) => o.labels[MANAGED_LABEL] !== "true");
    if (foreign) {
        throw new StepError(
            `The container "${foreign.name}", which synapse-postgres does not manage, also answers to "${input.alias}" on "${input.network}"; stop it so Synapse reaches only one server.`,
        );
    }
    return { info, fenceLifted, others };
}

/** The first serve after a switch: the marker says "serving"; after pg_upgrade, extensions and statistics. */
async function firstServe(container: string, user: string, marker: Marker): Promise<ServeResult["extensions"]> {
    const pgUpgraded = marker.method === "pg_upgrade";
    const [extensions] = await Promise.all([
        // pg_upgrade keeps each extension's old version: updated now, on the cluster that serves.
        pgUpgraded ? updateExtensions(container, user) : undefined,
        writeMarkerIn(container, user, advanceMarker(marker, "serving")),
        // pg_upgrade before 18 carries no statistics; the upgrade gathered a quick first stage. The full ANALYZE
        // runs now, in the background, while Synapse works (pg_upgrade's own advice).
        pgUpgraded && marker.major < 18
            ? run("docker", ["exec", "-d", container, "vacuumdb", "-U", user, "--all", "--analyze-only", "--quiet"])
            : undefined,
    ]);
    return extensions;
}

/**
 * Synapse's backup advice: after going back to older data, clients may hold one-time keys the older data still
 * lists as unclaimed; they are cleared before Synapse starts, so they are uploaded afresh. Only when Synapse's
 * stream moved past the old cluster: a revert without writes leaves the old data exactly as it was.
 */
async function clearOneTimeKeys(input: ServeInput, user: string): Promise<number> {
    const rows = await query(
        input.container,
        user,
        "WITH gone AS (DELETE FROM e2e_one_time_keys_json RETURNING 1) SELECT count(*) FROM gone",
        input.database ?? "synapse",
    ).catch(() => [["0"]]);
    return Number(rows[0][0]);
}

/**
 * Why a revert to this cluster must not go ahead, if it must not: another image than the one that wrote its data
 * (another build of the same major may sort text differently, which silently breaks indexes), events written
 * since the switch beyond what the user accepted, or events that cannot be counted.
 */
function revertRefusal(input: ServeInput, info: ContainerInfo, leaving: RevertLoss): string | undefined {
    const source = leaving.source;
    if (source?.container === input.container && source.imageId && source.imageId !== info.imageId) {
        const pin = source.pinned ?? source.imageId;
        return `The revert to "${input.container}" would run image ${info.image} (${info.imageId.slice(0, 19)}), not the image that wrote its data before the upgrade (${pin}); set postgres:image to ${pin} and run pulumi up again.`;
    }
    if (leaving.uncounted && input.acceptLoss !== "any") {
        return `Going back to "${input.container}" cannot be checked for lost writes: "${leaving.from}" served Synapse after an upgrade, but ${leaving.uncounted}; start it so its events can be counted, or, to go back whatever it holds, set postgres:revertAcceptLoss any and run pulumi up again (its data is kept).`;
    }
    if (input.acceptLoss !== "any" && leaving.lost > (input.acceptLoss ?? 0)) {
        return `Going back to "${input.container}" would lose ${leaving.lost} event(s) written to "${leaving.from}" since the switch at ${leaving.at}; to accept that, set postgres:revertAcceptLoss ${leaving.lost} and run pulumi up again (those events stay in "${leaving.from}", which is kept).`;
    }
    return undefined;
}

/**
 * Newer clusters of ours that answer to the alias when they run, and do not run now: what a revert leaves. An
 * older one (the source an upgrade just stopped) is not being left by this serve, so it is not counted.
 */
async function stoppedPeers(input: ServeInput, self: ContainerInfo): Promise<ContainerInfo[]> {
    const { stdout } = await run("docker", [
        "ps",
        "-aq",
        "--filter",
        `label=${MANAGED_LABEL}=true`,
        "--filter",
        "status=exited",
        "--filter",
        "status=created",
        "--filter",
        "status=dead",
    ]);
    // An adopted container carries no major label: every cluster of ours beside it is newer.
    const major = Number(self.labels[CLUSTER_LABEL] ?? 0);
    const found: ContainerInfo[] = [];
    for (const id of stdout.split("\n").filter(Boolean)) {
        const c = await inspectContainer(id);
        const newer = Number(c?.labels[CLUSTER_LABEL] ?? 0) > major;
        if (
            c &&
            !c.running &&
            newer &&
            c.name !== input.container &&
            c.networks[input.network]?.aliases.includes(input.alias)
        )
            found.push(c);
    }
    return found;
}

/** Running containers on the network that answer to the alias. */
async function holdersOf(network: string, alias: string) {
    const { stdout } = await run("docker", [
        "network",
        "inspect",
        "--format",
        "{{range $id, $c := .Containers}}{{$c.Name}}\n{{end}}",
        network,
    ]).catch(() => {
        throw new StepError(
            `The Docker network "${network}" does not exist; create it or set postgres:network to the one Synapse uses.`,
        );
    });
    const holders = [];
    for (const name of stdout.split("\n").filter(Boolean)) {
        const c = await inspectContainer(name);
        if (c?.running && c.networks[network]?.aliases.includes(alias)) holders.push(c);
    }
    return holders;
}
