// The new cluster's data location (volume or host folder) and the marker file that says what we did to it.
// The marker lets every step tell our own work (safe to redo) from data we did not create (never touched), and
// data that has served Synapse (kept aside, never discarded) from a staging copy that never did.
import { hostFolders } from "../host/folders";
import { DataLocation, dataLayout, formatDataLocation } from "./layout";
import { ContainerInfo, containersUsing, ourContainer, removeContainer, runWithData } from "../docker/containers";
import { copyFileOut, writeFileIn } from "../docker/files";
import { query } from "../docker/psql";
import { CopyPoint } from "../switch/fence";
import { run, ProcessError } from "../docker/process";
import { StepError } from "../step-error";
import { MANAGED_LABEL, SET_ASIDE_FROM_LABEL } from "../names";

export const MARKER_FILE = "synapse-pg-upgrade.json";

/**
 * restoring/restored: a dump load; prepared/restored: pg_upgrade (prepared is an empty new cluster made before
 * Synapse stops). Up to "verified" it is a staging copy.
 */
export type MarkerState = "prepared" | "restoring" | "restored" | "verified" | "cutover" | "serving";

export interface Marker {
    tool: "synapse-postgres";
    state: MarkerState;
    major: number;
    /** The old cluster, and exactly the image that wrote its data (a revert must run that one). */
    source: { container: string; version: string; imageId?: string; pinned?: string };
    /** The dump loaded (dump methods); pg_upgrade has none. */
    dump?: { path: string; sha256: string };
    method?: "directory" | "dumpall" | "pg_upgrade";
    /**
     * When the copy of the old data was taken (the dump's, or pg_upgrade's at the downtime), with Synapse stopped:
     * a Synapse started again on the old cluster after it may have written what the copy lacks (synapse.ts).
     */
    copiedAt?: string;
    /** The old cluster's write horizon at the copy point: cutover refuses when it moved (fence.ts). */
    copyPoint?: CopyPoint;
    history: { state: MarkerState; at: string }[];
    /** The old cluster's last event (Synapse's events.stream_ordering) when the switch happened. */
    switchedAt?: { database: string; eventsStreamOrdering: number; at: string };
}

export interface TargetState {
    /** Nothing at all in the volume or folder. */
    isEmpty: boolean;
    /** Our marker, when PGDATA holds one. */
    marker?: Marker;
    /** Top-level entries, for messages about data we did not create. */
    entries: string[];
}

export function markerPath(major: number): string {
    return `${dataLayout(major).pgdata}/${MARKER_FILE}`;
}

/** Whether the volume or host folder exists; asked without a helper container, whose mount would create it. */
export async function locationExists(data: DataLocation): Promise<boolean> {
    return data.kind === "volume"
        ? run("docker", ["volume", "inspect", data.name]).then(
              () => true,
              () => false,
          )
        : (await hostFolders()).stat(data.path).then(Boolean);
}

export async function readTargetState(data: DataLocation, major: number, image: string): Promise<TargetState> {
    const { mountTarget } = dataLayout(major);
    const mounts = [{ data, target: mountTarget }];
    const listing = await runWithData(image, mounts, ["find", mountTarget, "-mindepth", "1", "-maxdepth", "1"]);
    const entries = listing
        .split("\n")
        .filter(Boolean)
        .map((p) => p.slice(mountTarget.length + 1));
    if (entries.length === 0) return { isEmpty: true, entries };
    let marker: Marker | undefined;
    try {
        marker = JSON.parse(await runWithData(image, mounts, ["cat", markerPath(major)]));
    } catch (err) {
        if (!(err instanceof ProcessError)) throw err;
    }
    return { isEmpty: false, marker, entries };
}

/**
 * The same, read through the staging container that mounts the location (running or stopped) with docker cp:
 * a tenth of the time of a helper container, which counts when Synapse is down.
 */
export async function readTargetStateThrough(container: string, major: number): Promise<TargetState> {
    return { isEmpty: false, marker: await readMarkerThrough(container, major), entries: [] };
}

/** The marker of a major's data, read through a container that mounts it, running or stopped (docker cp). */
export async function readMarkerThrough(container: string, major: number): Promise<Marker | undefined> {
    return readMarkerInData(container, dataLayout(major).pgdata);
}

/** The marker in the data directory `pgdata` of a container, running or stopped (docker cp). */
export async function readMarkerInData(container: string, pgdata: string): Promise<Marker | undefined> {
    const text = await copyFileOut(container, `${pgdata}/${MARKER_FILE}`);
    return text === undefined ? undefined : JSON.parse(text.toString("utf8"));
}

export function advanceMarker(marker: Marker, state: MarkerState): Marker {
    return { ...marker, state, history: [...marker.history, { state, at: new Date().toISOString() }] };
}

/** True once Synapse may have written to this cluster: from then on it is user data, never discarded. */
export function hasServed(marker: Marker): boolean {
    return marker.state === "cutover" || marker.state === "serving";
}

/** The refusal for a new data location that holds files we did not create: never touched, never deleted. */
export function foreignDataError(data: DataLocation, state: TargetState): StepError {
    return new StepError(
        `The new data location ${formatDataLocation(data)} already holds files synapse-postgres did not create (${state.entries.slice(0, 5).join(", ")}); move them away or choose another postgres:dataRoot, they are never deleted by this tool.`,
    );
}

/** The staging container by this name, if any; one we did not create is never ours to replace. */
export function ourStaging(name: string): Promise<ContainerInfo | undefined> {
    return ourContainer(name, "staging");
}

/**
 * Makes the new data location ready for a new staging copy (restore and pg_upgrade's prepare). A copy that served
 * Synapse after an earlier cutover (then a revert) may hold writes the old cluster lacks: every byte of it is kept
 * elsewhere first. Data we did not create is refused. What is left is empty, or a staging copy of ours that never
 * served: safe to make again. Returns where a served copy was set aside.
 */
export async function makeRoomForStaging(
    data: DataLocation,
    major: number,
    image: string,
    target: TargetState,
    staging: ContainerInfo | undefined,
): Promise<string | undefined> {
    let setAsideTo: string | undefined;
    if (target.marker && hasServed(target.marker)) {
        if (staging) await removeContainer(staging.name);
        await requireUnused(data);
        setAsideTo = await setAside(data, major, image);
    } else if (!target.marker && !target.isEmpty && !staging) {
        throw foreignDataError(data, target);
    }
    if (staging) await removeContainer(staging.name);
    await requireUnused(data);
    if (!target.isEmpty && !setAsideTo) await emptyTarget(data, major, image);
    return setAsideTo;
}

/** Removes everything in the location. Only ever called on a staging copy we made (see the callers' checks). */
export async function emptyTarget(data: DataLocation, major: number, image: string): Promise<void> {
    const { mountTarget } = dataLayout(major);
    await runWithData(
        image,
        [{ data, target: mountTarget }],
        ["find", mountTarget, "-mindepth", "1", "-maxdepth", "1", "-exec", "rm", "-rf", "{}", "+"],
    );
}

/**
 * Moves a cluster that has served Synapse out of the way so a new upgrade can use the location, keeping every
 * byte: a host folder is renamed beside itself, a volume is copied into a new volume and then emptied.
 * Returns where the data now is.
 */
export async function setAside(data: DataLocation, major: number, image: string): Promise<string> {
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "");
    if (data.kind === "folder") {
        const aside = `${data.path}.reverted-${stamp}`;
        await (await hostFolders()).rename(data.path, aside);
        return aside;
    }
    const aside = `${data.name}-reverted-${stamp}`;
    await run("docker", [
        "volume",
        "create",
        "--label",
        `${MANAGED_LABEL}=true`,
        "--label",
        `${SET_ASIDE_FROM_LABEL}=${data.name}`,
        aside,
    ]);
    await runWithData(
        image,
        [
            { data, target: "/from" },
            { data: { kind: "volume", name: aside }, target: "/to" },
        ],
        ["cp", "-a", "/from/.", "/to/"],
    );
    await emptyTarget(data, major, image);
    return aside;
}

/** Refuses when a container other than `allowed` mounts the location: two servers on one PGDATA corrupt it. */
export async function requireUnused(data: DataLocation, allowed: string[] = []): Promise<void> {
    const users = (await containersUsing(data)).filter((c) => !allowed.includes(c.name));
    if (users.length > 0) {
        const names = users.map((c) => `"${c.name}"${c.running ? " (running)" : ""}`).join(", ");
        throw new StepError(
            `The data location ${formatDataLocation(data)} is mounted by ${names}; remove that container before upgrading into it.`,
        );
    }
}

/**
 * Each container's data directory as its server reported it, so a marker read then written costs one psql and
 * one tee (every docker exec is downtime). A container's data directory does not change while a step runs.
 */
const dataDirectories = new Map<string, string>();

/** Reads the marker through a running container (PGDATA from the server itself), in one psql. */
export async function readMarkerIn(container: string, user: string): Promise<Marker | undefined> {
    const [[dir, found, text]] = await query(
        container,
        user,
        `SELECT current_setting('data_directory'), f IS NOT NULL, coalesce(f, '')
           FROM pg_read_file(current_setting('data_directory') || '/${MARKER_FILE}', 0, 1048576, true) AS f`,
    );
    dataDirectories.set(container, dir);
    return found === "t" ? JSON.parse(text) : undefined;
}

/** The marker file's text, as every writer writes it. */
export function markerText(marker: Marker): string {
    return JSON.stringify(marker, null, 2) + "\n";
}

export async function writeMarkerIn(container: string, user: string, marker: Marker): Promise<void> {
    await writeFileIn(container, `${await dataDirectoryOf(container, user)}/${MARKER_FILE}`, markerText(marker));
}

/**
 * The marker written through a running staging container of a major (ours, so its PGDATA is the layout's): one
 * tee, no psql, for the upgrade's downtime.
 */
export async function writeMarkerAt(container: string, major: number, marker: Marker): Promise<void> {
    await writeFileIn(container, markerPath(major), markerText(marker));
}

async function dataDirectoryOf(container: string, user: string): Promise<string> {
    let dir = dataDirectories.get(container);
    if (dir === undefined) {
        [[dir]] = await query(container, user, "SELECT current_setting('data_directory')");
        dataDirectories.set(container, dir);
    }
    return dir;
}
