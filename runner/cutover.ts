// cutover: the switch. After verify passed: the staging container is stopped cleanly and removed (its data stays
// in the new volume or folder, where Pulumi's serving container of the new major picks it up), and the old
// container is stopped cleanly. The old data is never touched; its container stays, stopped, for a revert.
import { inspectContainer, query, removeContainer, resumeStaging, stopContainer, superuserOf } from "./docker";
import { DataLocation } from "./layout";
import { removeStandbysOf } from "./standby";
import { StepError } from "./step-error";
import { requireCopyAfterSynapse } from "./synapse";
import { advanceMarker, hasServed, readMarkerIn, readMarkerThrough, readTargetState, writeMarkerIn } from "./target";

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
}

export async function cutover(input: CutoverInput): Promise<CutoverResult> {
    const staging = await inspectContainer(input.new);
    const stopped: string[] = [];
    const recorded = staging && !staging.running ? await readMarkerThrough(input.new, input.major) : undefined;
    if (recorded?.state === "cutover") {
        // A switch killed after it recorded itself (the marker says cutover) and stopped the staging container:
        // finish it rather than refuse every re-run.
        await requireCopyAfterSynapse(input.synapse ?? [], recorded.copiedAt);
        await removeContainer(input.new);
        stopped.push(input.new);
    } else if (staging) {
        // Stopped by a Docker daemon restart (it has no restart policy): started again, it is ours.
        if (!(await resumeStaging(staging)).running) throw new StepError(`The staging container "${input.new}" is stopped; run restore and verify again before the switch.`);
        const user = superuserOf(staging);
        const database = input.database ?? "synapse";
        // Where Synapse's event stream stood at the switch: a revert can then tell how many events it would lose.
        // Read side by side (each docker exec is downtime): the marker, and the old server's position (only read).
        const [marker, { old, position }] = await Promise.all([
            readMarkerIn(input.new, user),
            inspectContainer(input.old).then(async (old) => ({ old, position: old?.running ? await eventsPosition(input.old, superuserOf(old), database) : undefined })),
        ]);
        // A marker that says cutover is this step's own, from a run killed before the staging container was gone.
        if (marker?.state !== "verified" && marker?.state !== "cutover") {
            throw new StepError(`The new cluster in "${input.new}" has not passed verify (state: ${marker?.state ?? "no marker"}); the switch happens only after verify.`);
        }
        await requireCopyAfterSynapse(input.synapse ?? [], marker.copiedAt);
        if (marker.state === "verified") {
            const switched = advanceMarker(marker, "cutover");
            if (position !== undefined) switched.switchedAt = { database, eventsStreamOrdering: position, at: new Date().toISOString() };
            await writeMarkerIn(input.new, user, switched);
        }
        // Both servers stop side by side (Synapse is down: each second counts); the old one is only stopped.
        await Promise.all([
            stopContainer(input.new).then(() => removeContainer(input.new)),
            old?.running ? stopContainer(input.old) : Promise.resolve(),
            // The upgrade removed the standby it used; one it could not use must not follow the stopped old server.
            removeStandbysOf(input.old),
        ]);
        stopped.push(input.new);
        if (old?.running) stopped.push(input.old);
        return { alreadyDone: false, stopped };
    } else {
        const target = await readTargetState(input.data, input.major, input.image);
        if (!target.marker || !hasServed(target.marker)) {
            throw new StepError(`There is no staging container "${input.new}" and the new data has not been switched to; run restore and verify first.`);
        }
    }
    const old = await inspectContainer(input.old);
    if (old?.running) {
        await stopContainer(input.old);
        stopped.push(input.old);
    }
    return { alreadyDone: stopped.length === 0, stopped };
}

/** Synapse's newest event stream position, or undefined where there is no Synapse schema. */
export async function eventsPosition(container: string, user: string, database: string): Promise<number | undefined> {
    const rows = await query(container, user,
        "SELECT CASE WHEN to_regclass('public.events') IS NULL THEN NULL ELSE (SELECT coalesce(max(stream_ordering), 0) FROM public.events) END",
        database).catch(() => [] as string[][]);
    const value = rows[0]?.[0];
    return value === undefined || value === "" ? undefined : Number(value);
}
