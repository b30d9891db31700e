// cutover: the switch. After verify passed, with the write fence up again and the old cluster's write horizon
// unchanged since the copy point: the staging container is stopped cleanly and removed (its data stays in the new
// volume or folder, where Pulumi's serving container of the new major picks it up), and the old container is
// stopped cleanly and given its networks back. The old data is never touched; its container stays, stopped, for a
// revert.
import { requireUpgradeWhereItBegan } from "../target/where-it-began";
import {
    ContainerInfo,
    inspectContainer,
    removeContainer,
    resumeStaging,
    stopContainer,
    superuserOf,
} from "../docker/containers";
import { query } from "../docker/psql";
import { Fence, liftFence, raiseFence, readWriteHorizon, requireNoWritesSince } from "./fence";
import { DataLocation } from "../target/layout";
import { removeStandbysOf } from "../pg-upgrade/standby";
import { StepError } from "../step-error";
import { requireCopyAfterSynapse } from "./synapse";
import {
    advanceMarker,
    hasServed,
    readMarkerIn,
    readMarkerThrough,
    readTargetState,
    writeMarkerIn,
} from "../target/markers";

export interface CutoverInput {
    old: string;
    /** The staging container that verify checked. */
    new: string;
    /** The new cluster's data, image and major: to read the marker once the staging container is gone. */
    data: DataLocation;
    image: string;
    major: number;
    /** Synapse's database, whose stream position is recorded for a later revert. */
    database?: string;
    /** Synapse's containers: one started again on the old cluster after the copy was taken refuses the switch. */
    synapse?: string[];
}

export interface CutoverResult {
    alreadyDone: boolean;
    stopped: string[];
    /** The write fence raised again before the check (fence.ts), when the old server was running. */
    fence?: Fence;
    /** Networks the stopped old container was put back on, for a revert; undefined when it was not fenced. */
    reconnected?: string[];
}

export async function cutover(input: CutoverInput): Promise<CutoverResult> {
    await requireUpgradeWhereItBegan(input.old, input.new, input.data, input.major);
    const [staging, oldInfo] = await Promise.all([inspectContainer(input.new), inspectContainer(input.old)]);
    const result: CutoverResult = { alreadyDone: false, stopped: [] };
    // The fence goes up again first (a failed step before this one lifted it): nothing may write from here on.
    if (oldInfo?.running && staging) result.fence = await raiseFence(oldInfo, superuserOf(oldInfo));
    const recorded = staging && !staging.running ? await readMarkerThrough(input.new, input.major) : undefined;
    if (recorded?.state === "cutover") {
        // A switch killed after it recorded itself (the marker says cutover) and stopped the staging container:
        // finish it rather than refuse every re-run.
        await requireCopyAfterSynapse(input.synapse ?? [], recorded.copiedAt);
        if (oldInfo?.running)
            requireNoWritesSince(
                recorded.copyPoint,
                input.old,
                await readWriteHorizon(input.old, superuserOf(oldInfo)),
            );
        await removeContainer(input.new);
        result.stopped.push(input.new);
    } else if (staging) {
        await switchFromStaging(input, staging, oldInfo, result);
    } else {
        const target = await readTargetState(input.data, input.major, input.image);
        if (!target.marker || !hasServed(target.marker)) {
            throw new StepError(
                `There is no staging container "${input.new}" and the new data has not been switched to; run restore and verify first.`,
            );
        }
    }
    const old = await inspectContainer(input.old);
    if (old?.running) {
        await stopContainer(input.old);
        result.stopped.push(input.old);
    }
    // Stopped, the old container gets its networks back: a revert starts it as it was, answering to Synapse's alias.
    result.reconnected = await liftFence(input.old);
    result.alreadyDone = result.stopped.length === 0 && result.reconnected === undefined;
    return result;
}

/** The switch proper, from a staging container that verify passed: checked, recorded, then both servers stop. */
async function switchFromStaging(
    input: CutoverInput,
    stagingInfo: ContainerInfo,
    old: ContainerInfo | undefined,
    result: CutoverResult,
): Promise<void> {
    // Stopped by a Docker daemon restart (it has no restart policy): started again, it is ours.
    const staging = await resumeStaging(stagingInfo);
    if (!staging.running)
        throw new StepError(
            `The staging container "${input.new}" is stopped; run restore and verify again before the switch.`,
        );
    const user = superuserOf(staging);
    const database = input.database ?? "synapse";
    // Read side by side (each docker exec is downtime): the marker, and under the fence the old server's write
    // horizon and where Synapse's event stream stood (recorded so a revert can tell how many events it would lose).
    const oldUser = old ? superuserOf(old) : "";
    const [marker, horizon, position] = await Promise.all([
        readMarkerIn(input.new, user),
        old?.running ? readWriteHorizon(input.old, oldUser) : undefined,
        old?.running ? eventsPosition(input.old, oldUser, database) : undefined,
    ]);
    // A marker that says cutover is this step's own, from a run killed before the staging container was gone.
    if (marker?.state !== "verified" && marker?.state !== "cutover") {
        throw new StepError(
            `The new cluster in "${input.new}" has not passed verify (state: ${marker?.state ?? "no marker"}); the switch happens only after verify.`,
        );
    }
    await requireCopyAfterSynapse(input.synapse ?? [], marker.copiedAt);
    if (marker.state === "verified") {
        if (!horizon)
            throw new StepError(
                `The old container "${input.old}" is not running, so the switch cannot check that it took no writes since the copy was taken; start it (docker start ${input.old}) and run pulumi up again.`,
            );
        requireNoWritesSince(marker.copyPoint, input.old, horizon);
        const switched = advanceMarker(marker, "cutover");
        if (position !== undefined)
            switched.switchedAt = { database, eventsStreamOrdering: position, at: new Date().toISOString() };
        await writeMarkerIn(input.new, user, switched);
    }
    // Both servers stop side by side (Synapse is down: each second counts); the old one is only stopped.
    await Promise.all([
        stopContainer(input.new).then(() => removeContainer(input.new)),
        old?.running ? stopContainer(input.old) : Promise.resolve(),
        // The upgrade removed the standby it used; one it could not use must not follow the stopped old server.
        removeStandbysOf(input.old),
    ]);
    result.stopped.push(input.new);
    if (old?.running) result.stopped.push(input.old);
}

/** Synapse's newest event stream position, or undefined where there is no Synapse schema. */
export async function eventsPosition(container: string, user: string, database: string): Promise<number | undefined> {
    const rows = await query(
        container,
        user,
        "SELECT CASE WHEN to_regclass('public.events') IS NULL THEN NULL ELSE (SELECT coalesce(max(stream_ordering), 0) FROM public.events) END",
        database,
    ).catch(() => [] as string[][]);
    const value = rows[0]?.[0];
    return value === undefined || value === "" ? undefined : Number(value);
}
