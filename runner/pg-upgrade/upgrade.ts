// method pg_upgrade: the physical upgrade, pg_upgrade --copy, the fastest way there is (the data files are copied,
// not re-loaded and re-indexed). pg_upgrade needs the old major's binaries next to the new ones, which no official
// image has, so they are taken from the very image the old cluster runs:
//
//   prepare (Synapse still up)  the old image's file system is unpacked into a volume of its own; the old
//                               binaries are run from it through the old image's own dynamic loader and libraries,
//                               inside the new image (probed here, so an image where that cannot work is found
//                               before any downtime); the new cluster is initialised as the new image does it and
//                               stopped: that is the staging copy.
//                               Then a streaming standby of the old cluster, in the new location (standby.ts).
//   upgrade (Synapse stopped)   with the standby: it catches up, is promoted and stopped, and pg_upgrade --link
//                               turns it into the new cluster; the old server never stops. Without one: the old
//                               container is stopped cleanly, pg_upgrade --copy runs in a throw-away container of
//                               the new image, and the old container is started again, unchanged.
//                               Either way the old server then runs for copy-config and verify beside the new one.
//
// --link only ever on the standby, which is ours to give away; on the old data always --copy: the old cluster's
// files are read, not shared, so it stays a complete, startable cluster whatever happens to the new one.
import { requireUpgradeWhereItBegan } from "../target/where-it-began";
import {
    ContainerInfo,
    inspectContainer,
    requireContainer,
    runWithData,
    startContainer,
    stopContainer,
    superuserOf,
} from "../docker/containers";
import { existsIn } from "../docker/files";
import { waitUntilAccepting } from "../docker/psql";
import { DataLocation, dataLayout } from "../target/layout";
import { run } from "../docker/process";
import { binariesVolume, OldBinaries } from "./old-binaries";
import { PhaseClock, rehashLoginRole } from "../target/staging";
import { CopyConfigResult } from "../config/copy-config";
import { StepError } from "../step-error";
import {
    catchUpAndPromote,
    isStreaming,
    lastWritePosition,
    removeStandby,
    standbyContainerName,
    standbyDatadirFor,
} from "./standby";
import { countAttver } from "./attver";
import { ExtensionUpdate } from "../checks/extensions";
import { Fence, raiseFence, readWriteHorizon, WriteHorizon } from "../switch/fence";
import { Carried, carryNotReplicated, relationsNotReplicated } from "./not-replicated";
import { advanceMarker, Marker, readMarkerThrough } from "../target/markers";
import {
    flagPgUpgradeStarted,
    hasPgUpgradeLeftovers,
    markUpgraded,
    pgUpgrade,
    removeLeftoverPgUpgrade,
    startAndWait,
} from "./run";
import { preparePgUpgrade } from "./prepare";

export interface PgUpgradeInput {
    /** The old cluster's container. */
    container: string;
    /** The staging container of the new major (created by prepare, started by upgrade). */
    staging: string;
    /** The new major, its image and data location. */
    image: string;
    major: number;
    data: DataLocation;
    /** The bootstrap superuser's password (SYNAPSE_PG_PASSWORD), for the new cluster's first start. */
    password: string;
    /** The role Synapse logs in as: an md5 hash of it is re-set as scram-sha-256. */
    loginUser?: string;
    /** postgres:settings, postgres:dropSettings and postgres:dropAccessRules, for prepare's copy of the configuration (see copy-config.ts). */
    settings?: Record<string, string>;
    drop?: string[];
    dropAccessRules?: string[];
}

export interface PrepareResult {
    binaries: OldBinaries;
    /** The staging copy was already prepared for this old cluster: nothing done. */
    reused: boolean;
    setAsideTo?: string;
    /** The standby's container when one streams; else why there is none (the upgrade then copies the data). */
    standby?: string;
    noStandby?: string;
    /** With a standby: the unlogged relations it holds empty, which the upgrade carries across (not-replicated.ts). */
    unlogged?: string;
    /** The old configuration carried into the new cluster and accepted by its server (unless config is false). */
    config?: CopyConfigResult;
    /** Extensions the new image has in a newer version: pg_upgrade keeps the old one, serve updates them. */
    extensionUpdates: ExtensionUpdate[];
}

export interface UpgradeResult {
    alreadyDone: boolean;
    /** link: pg_upgrade --link on the standby, the old server never stopped; copy: pg_upgrade --copy of the old data. */
    via?: "link" | "copy";
    rehashed?: string;
    /** With --link: what a standby does not hold as the old cluster does, carried across (not-replicated.ts). */
    carried?: Carried;
    seconds: number;
    /** The write fence raised on the old cluster at the copy point (fence.ts). */
    fence?: Fence;
}

/** What the upgrade step reads at the copy point, under the fence: the new cluster as prepare left it, the old one. */
interface AtCopyPoint {
    old: ContainerInfo;
    staging: ContainerInfo | undefined;
    superuser: string;
    standby: string;
    fence: Fence;
    marker: Marker | undefined;
    leftover: boolean;
    streaming: boolean;
    lastWrite: string | Error | undefined;
    horizon: WriteHorizon | undefined;
}

/**
 * Synapse stopped: pg_upgrade --link on the streaming standby (the old server runs on), or, without one, the old
 * cluster is stopped, pg_upgrade --copy runs, and both servers start again.
 */
export async function runPgUpgrade(input: PgUpgradeInput): Promise<UpgradeResult> {
    // Every second here is downtime: the marker is read with docker cp (no helper container), the binaries are
    // the ones prepare proved, and the two servers start side by side.
    const started = Date.now();
    const phases = new PhaseClock("upgrade");
    const at = await readCopyPoint(input);
    const { old, staging, superuser, marker, fence } = at;
    if (staging && (marker?.state === "restored" || marker?.state === "verified")) {
        if (!staging.running) await startContainer(input.staging);
        await waitUntilAccepting(input.staging, superuser);
        return { alreadyDone: true, seconds: 0, fence };
    }
    // A new cluster that pg_upgrade already worked on (or that prepare never made) must be made again.
    const clean =
        staging &&
        !staging.running &&
        marker?.state === "prepared" &&
        marker.source.imageId === old.imageId &&
        !at.leftover;
    if (!clean) {
        if (!old.running) await startAndWait(input.container, superuser);
        // Synapse is down: no new standby now (its copy would take as long as --copy does; prepare removes the old
        // one before it makes the new cluster again), the configuration is left to copy-config, the next step,
        // which has the user's dropSettings, and no --check (pg_upgrade checks again as it runs).
        const again = await preparePgUpgrade(input, { standby: false, config: false, check: false });
        phases.lap(again.reused ? "new cluster as prepared before" : "new cluster prepared again");
    }
    const prepared = clean ? marker : (await readMarkerThrough(input.staging, input.major))!;
    const copied: CopiedAt = {
        copiedAt: new Date(started).toISOString(),
        copyPoint: {
            at: new Date(started).toISOString(),
            horizon: at.horizon ?? (await readWriteHorizon(input.container, superuser)),
        },
    };
    if (clean && at.streaming && at.lastWrite !== undefined) {
        if (at.lastWrite instanceof Error) throw at.lastWrite;
        const linked = await linkStandby(input, old, superuser, prepared, at.standby, at.lastWrite, phases, copied);
        return { ...linked, fence };
    }
    return { ...(await copyOldData(input, at, prepared, phases, copied)), fence };
}

/**
 * The copy point: from here to the switch the old cluster takes no writes from anyone (fence.ts), so the horizon
 * and the last write position read here are final. A pg_upgrade still running from a killed attempt is gone first.
 */
async function readCopyPoint(input: PgUpgradeInput): Promise<AtCopyPoint> {
    await requireUpgradeWhereItBegan(input.container, input.staging, input.data, input.major);
    const [old, staging] = await Promise.all([
        requireContainer(input.container, "old"),
        removeLeftoverPgUpgrade(input.staging).then(() => inspectContainer(input.staging)),
    ]);
    const superuser = superuserOf(old);
    const standby = standbyContainerName(input.staging);
    const fence = await raiseFence(old, superuser);
    if (!staging)
        return {
            old,
            staging,
            superuser,
            standby,
            fence,
            marker: undefined,
            leftover: false,
            streaming: false,
            lastWrite: undefined,
            horizon: undefined,
        };
    // Read side by side: the marker, pg_upgrade's leftovers, the standby, the write horizon, and where the old
    // server's last write ends (needed only with a standby; a failure to read it counts only then).
    const [marker, leftover, streaming, lastWrite, horizon] = await Promise.all([
        readMarkerThrough(input.staging, input.major),
        hasPgUpgradeLeftovers(input.staging, input.major),
        old.running ? isStreaming(standby, superuser) : Promise.resolve(false),
        old.running
            ? lastWritePosition(input.container, superuser).catch((err: Error) => err)
            : Promise.resolve(undefined),
        old.running ? readWriteHorizon(input.container, superuser) : Promise.resolve(undefined),
    ]);
    return { old, staging, superuser, standby, fence, marker, leftover, streaming, lastWrite, horizon };
}

/** Without a usable standby: the old cluster stopped cleanly, pg_upgrade --copy of its data, both servers started. */
async function copyOldData(
    input: PgUpgradeInput,
    at: AtCopyPoint,
    prepared: Marker,
    phases: PhaseClock,
    copied: CopiedAt,
): Promise<UpgradeResult> {
    const { old, superuser } = at;
    await removeStandby(at.standby);
    if (await existsIn(input.staging, standbyDatadirFor(input.major))) {
        // A standby that stopped streaming (or was promoted by an attempt that failed) is not used: its folder goes.
        await runWithData(
            input.image,
            [{ data: input.data, target: dataLayout(input.major).mountTarget }],
            ["rm", "-rf", standbyDatadirFor(input.major)],
        );
    }
    const marked = await countAttver(input.container, superuser);
    if (marked > 0) {
        throw new StepError(
            `${marked} column(s) of the old cluster carry PostgreSQL 17.12's internal pg_attver marker, which pg_upgrade's own schema dump carries into the new server, which rejects it; a standby copy is cleared of it, but there is none to use, and the old data is never changed: set postgres:method to directory (its dump leaves the marker out) and run pulumi up again.`,
        );
    }
    // pg_upgrade wants the old cluster cleanly shut down: SIGINT, the fast shutdown, with its checkpoint.
    await Promise.all([stopContainer(input.container), flagPgUpgradeStarted(input.staging, input.major)]);
    phases.lap("old server stopped");
    try {
        await pgUpgrade(input, old, superuser, binariesVolume(old), "old");
        phases.lap("pg_upgrade --copy done");
    } catch (err) {
        // The old cluster goes back to what it was, running (the CLI starts Synapse on it again).
        await startAndWait(input.container, superuser).catch(() => undefined);
        throw err;
    }
    // The old server comes back, unchanged, for copy-config and verify; the new one starts beside it.
    await Promise.all([startAndWait(input.container, superuser), startAndWait(input.staging, superuser)]);
    phases.lap("both servers started");
    await Promise.all([
        // pg_upgrade ran with --no-sync: the new files are made durable here, beside the statistics.
        run("docker", ["exec", input.staging, "sync"]),
        firstStatistics(input, superuser),
    ]);
    phases.lap(input.major < 18 ? "first statistics gathered, data made durable" : "data made durable");
    const login = { container: input.staging, password: input.password, loginUser: input.loginUser };
    const rehashed = await rehashLoginRole(login, superuser);
    await markUpgraded(input.staging, input.major, { ...advanceMarker(prepared, "restored"), ...copied });
    return { alreadyDone: false, via: "copy", rehashed, seconds: (Date.now() - Date.parse(copied.copiedAt!)) / 1000 };
}

/** When the copy was taken: the downtime's start, and the old cluster's write horizon under the fence. */
type CopiedAt = Pick<Marker, "copiedAt" | "copyPoint">;

/**
 * The downtime with a standby: it replays the old server's last writes, is promoted and stopped, and pg_upgrade
 * --link makes the new cluster of its files. The old server is never stopped (copy-config and verify read it).
 */
async function linkStandby(
    input: PgUpgradeInput,
    old: ContainerInfo,
    superuser: string,
    prepared: Marker,
    standby: string,
    lastWrite: string,
    phases: PhaseClock,
    copied: CopiedAt,
): Promise<UpgradeResult> {
    const started = Date.parse(copied.copiedAt!);
    let relations;
    try {
        // What the standby will not hold as the old server does, read once writes have stopped, beside the catch-up.
        [relations] = await Promise.all([
            relationsNotReplicated(input.container, superuser),
            catchUpAndPromote(standby, superuser, lastWrite, (what) => phases.lap(what)),
            flagPgUpgradeStarted(input.staging, input.major),
        ]);
        await pgUpgrade(input, old, superuser, binariesVolume(old), "standby");
        phases.lap("pg_upgrade --link done");
    } catch (err) {
        await removeStandby(standby).catch(() => undefined);
        throw err;
    }
    await Promise.all([removeStandby(standby), startAndWait(input.staging, superuser)]);
    phases.lap("new server started");
    // First: sync, the statistics and the marker then cover what was carried.
    const carried = await carryNotReplicated(relations, input.container, superuser, input.staging, superuser);
    phases.lap(
        `sequences and unlogged tables carried (${carried.sequences} sequence(s), ${carried.tables.length} table(s) with rows)`,
    );
    const [, , rehashed] = await Promise.all([
        run("docker", ["exec", input.staging, "sh", "-c", `rm -rf '${standbyDatadirFor(input.major)}' && sync`]),
        firstStatistics(input, superuser),
        rehashLoginRole({ container: input.staging, password: input.password, loginUser: input.loginUser }, superuser),
    ]);
    phases.lap(input.major < 18 ? "first statistics gathered, data made durable" : "data made durable");
    // Last, once the data is durable: the marker that says the new cluster is complete.
    await markUpgraded(input.staging, input.major, { ...advanceMarker(prepared, "restored"), ...copied });
    return { alreadyDone: false, via: "link", rehashed, carried, seconds: (Date.now() - started) / 1000 };
}

/**
 * Statistics travel with pg_upgrade only from 18. Before the switch: the quick first stage of --analyze-in-stages,
 * enough for sane plans; serve runs the full ANALYZE once Synapse is back.
 */
async function firstStatistics(input: PgUpgradeInput, superuser: string): Promise<void> {
    if (input.major >= 18) return;
    await run("docker", [
        "exec",
        "-e",
        `PGOPTIONS=-c default_statistics_target=1 -c vacuum_cost_delay=0`,
        input.staging,
        "vacuumdb",
        "-U",
        superuser,
        "--all",
        "--analyze-only",
        "--quiet",
        "--jobs",
        "2",
    ]);
}
