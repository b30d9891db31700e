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
import { promises as fs } from "node:fs";
import {
    ContainerInfo,
    inspectContainer,
    mountsHoldingPgdata,
    ourContainer,
    pgdataOf,
    pinnedReference,
    removeContainer,
    requireContainer,
    runWithData,
    startContainer,
    stopContainer,
    superuserOf,
} from "../docker/containers";
import { existsIn } from "../docker/files";
import { query, serverVersion, waitUntilAccepting, whenAccepting } from "../docker/psql";
import { DataLocation, dataLayout } from "../target/layout";
import { run, ProcessError } from "../docker/process";
import { pgUpgradeFailure, TailWriter } from "./output";
import { OLD_DATA, requirePgUpgradeCompatible } from "./check";
import { binariesVolume, OLD_ROOT, OldBinaries, oldBinaries, WRAPPERS } from "./old-binaries";
import { PhaseClock, rehashLoginRole, startStagingContainer } from "../target/staging";
import { databasesSize } from "../dump/dump";
import { checkSpace, requireSafeRestartPolicy } from "../checks/preflight";
import { copyConfig, CopyConfigResult } from "../config/copy-config";
import { StepError } from "../step-error";
import {
    catchUpAndPromote,
    isStreaming,
    lastWritePosition,
    NO_ARCHIVING,
    removeStandby,
    standbyBlocker,
    standbyContainerName,
    standbyDatadirFor,
    startStandby,
} from "./standby";
import { countAttver } from "./attver";
import { checkExtensions, ExtensionUpdate } from "../checks/extensions";
import { requireSameCollationRules } from "./collation";
import { Fence, raiseFence, readWriteHorizon, requireFenceable } from "../switch/fence";
import { Carried, carryNotReplicated, describeUnlogged, relationsNotReplicated } from "./not-replicated";
import {
    advanceMarker,
    makeRoomForStaging,
    Marker,
    markerPath,
    ourStaging,
    markerText,
    readMarkerThrough,
    readTargetState,
    writeMarkerAt,
} from "../target/markers";
import { ourLabels } from "../names";
import * as os from "node:os";
import * as path from "node:path";

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

/**
 * Before Synapse stops: old binaries ready and proven to run, new cluster initialised with the old configuration
 * (unless `config` is false) and stopped, and (unless `standby` is false) a standby of the old cluster streaming
 * into the new location.
 */
export async function preparePgUpgrade(
    input: PgUpgradeInput,
    opts: { standby?: boolean; config?: boolean; check?: boolean } = {},
): Promise<PrepareResult> {
    const withStandby = opts.standby !== false;
    const old = await requireContainer(input.container, "old");
    if (!old.running)
        throw new StepError(
            `The old container "${input.container}" is not running; start it so the upgrade can be prepared.`,
        );
    requireSafeRestartPolicy(old);
    requireFenceable(old);
    const superuser = superuserOf(old);
    const version = await whenAccepting(input.container, superuser, () => serverVersion(input.container, superuser));
    const binaries = await oldBinaries(old, input.image, version.major);
    const [extensionUpdates] = await Promise.all([
        checkExtensions(old.name, superuser, input.image),
        requireSameOwner(old, input.image),
        requireSameCollationRules(old.name, superuser, input.image, version.major),
    ]);

    const standbyName = standbyContainerName(input.staging);
    await removeLeftoverPgUpgrade(input.staging);
    const existing = await ourStaging(input.staging);
    const target = await readTargetState(input.data, input.major, input.image);
    const m = target.marker;
    if (
        m?.state === "prepared" &&
        m.source.container === old.name &&
        m.source.imageId === old.imageId &&
        existing &&
        !existing.running &&
        !(await hasPgUpgradeLeftovers(input.staging, input.major))
    ) {
        // The configuration again, as it is now (the user may have changed it since): the new cluster is started
        // for it and stopped cleanly again, as pg_upgrade wants it.
        let config: CopyConfigResult | undefined;
        if (opts.config !== false) {
            await startContainer(input.staging);
            await waitUntilAccepting(input.staging, superuser);
            config = await carryConfig(input);
            await stopContainer(input.staging);
        }
        // Again too: the old cluster may have changed since (a new column, a new extension).
        if (opts.check !== false)
            await requirePgUpgradeCompatible({ ...input, old, superuser, binaries: binaries.volume });
        if (!withStandby || (await isStreaming(standbyName, superuser)))
            return { binaries, reused: true, config, standby: withStandby ? standbyName : undefined, extensionUpdates };
        return { binaries, reused: true, config, extensionUpdates, ...(await prepareStandby(old, superuser, input)) };
    }
    // The standby mounts the new location: it goes first, so nothing of ours holds the location being made again.
    await removeStandby(standbyName);
    const setAsideTo = await makeRoomForStaging(input.data, input.major, input.image, target, existing);

    const [[encoding, collate, ctype, checksums]] = await query(
        input.container,
        superuser,
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype, current_setting('data_checksums') FROM pg_database WHERE datname = 'template1'",
    );
    await startStagingContainer({
        ...input,
        container: input.staging,
        superuser,
        locale: { encoding, collate, ctype },
        // pg_upgrade needs both clusters alike in data checksums; 18's initdb turns them on by default.
        initdbExtra: checksums === "on" ? "--data-checksums" : input.major >= 18 ? "--no-data-checksums" : undefined,
    });
    const config = opts.config !== false ? await carryConfig(input) : undefined;
    const now = new Date().toISOString();
    const marker: Marker = {
        tool: "synapse-postgres",
        state: "prepared",
        major: input.major,
        method: "pg_upgrade",
        source: {
            container: old.name,
            version: version.text,
            imageId: old.imageId,
            pinned: await pinnedReference(old.imageId),
        },
        history: [{ state: "prepared", at: now }],
    };
    await writeMarkerAt(input.staging, input.major, marker);
    await stopContainer(input.staging);
    // On the stopped new cluster as pg_upgrade will find it, before a standby is made for nothing.
    if (opts.check !== false) await requirePgUpgradeCompatible({ ...input, old, superuser, binaries: binaries.volume });
    return {
        binaries,
        reused: false,
        setAsideTo,
        config,
        extensionUpdates,
        ...(withStandby ? await prepareStandby(old, superuser, input) : { noStandby: "not asked for" }),
    };
}

/**
 * The old configuration, carried into the running new cluster and checked by its server while Synapse still
 * serves: a setting it rejects, or one it cannot start with (restart-only settings restart it here), stops
 * prepare before any downtime, with the new cluster stopped. pg_upgrade's documented order puts this after the
 * upgrade, but pg_upgrade leaves the new cluster's configuration files as they are and runs its server with
 * them; copy-config, at the downtime, finds them in place (or carries what changed since).
 */
async function carryConfig(input: PgUpgradeInput): Promise<CopyConfigResult> {
    try {
        return await copyConfig({
            from: input.container,
            to: input.staging,
            settings: input.settings,
            drop: input.drop,
            dropAccessRules: input.dropAccessRules,
        });
    } catch (err) {
        await stopContainer(input.staging).catch(() => undefined);
        throw err;
    }
}

/** A standby of the old cluster in the new location, or why there is none; the upgrade works either way. */
async function prepareStandby(
    old: ContainerInfo,
    superuser: string,
    input: PgUpgradeInput,
): Promise<Pick<PrepareResult, "standby" | "noStandby" | "unlogged">> {
    const name = standbyContainerName(input.staging);
    const blocker = await standbyBlocker(old.name, superuser);
    if (blocker) return { noStandby: blocker };
    try {
        // The copy is written while Synapse serves, maybe on the disk the old server writes its WAL to: a full
        // disk there would stop the live server. Not enough room: no standby (preflight then says what to free).
        await checkSpace({ targetData: input.data }, await databasesSize(old.name, superuser));
        const [relations] = await Promise.all([
            relationsNotReplicated(old.name, superuser),
            startStandby(old, superuser, name, input.data),
        ]);
        return { standby: name, unlogged: describeUnlogged(relations) || undefined };
    } catch (err) {
        if (!(err instanceof StepError)) throw err;
        await removeStandby(name).catch(() => undefined);
        return { noStandby: err.message };
    }
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
    // A pg_upgrade still running from a killed attempt is gone before anything of the new cluster is read.
    const [old, staging] = await Promise.all([
        requireContainer(input.container, "old"),
        removeLeftoverPgUpgrade(input.staging).then(() => inspectContainer(input.staging)),
    ]);
    const superuser = superuserOf(old);
    const standby = standbyContainerName(input.staging);
    // The copy point: from here to the switch the old cluster takes no writes from anyone (fence.ts), so the
    // horizon and the last write position read below are final.
    const fence = await raiseFence(old, superuser);
    // Read side by side: the marker, pg_upgrade's leftovers, the standby, the write horizon, and where the old
    // server's last write ends (needed only with a standby; a failure to read it counts only then).
    const [marker, leftover, streaming, lastWrite, horizon] = staging
        ? await Promise.all([
              readMarkerThrough(input.staging, input.major),
              hasPgUpgradeLeftovers(input.staging, input.major),
              old.running ? isStreaming(standby, superuser) : Promise.resolve(false),
              old.running
                  ? lastWritePosition(input.container, superuser).catch((err: Error) => err)
                  : Promise.resolve(undefined),
              old.running ? readWriteHorizon(input.container, superuser) : Promise.resolve(undefined),
          ])
        : [undefined, false, false, undefined, undefined];
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
        !leftover;
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
            horizon: horizon ?? (await readWriteHorizon(input.container, superuser)),
        },
    };
    if (clean && streaming && lastWrite !== undefined) {
        if (lastWrite instanceof Error) throw lastWrite;
        return { ...(await linkStandby(input, old, superuser, prepared, standby, lastWrite, phases, copied)), fence };
    }
    await removeStandby(standby);
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
    const rehashed = await rehashLoginRole(
        { container: input.staging, password: input.password, loginUser: input.loginUser },
        superuser,
    );
    await markUpgraded(input.staging, input.major, { ...advanceMarker(prepared, "restored"), ...copied });
    return { alreadyDone: false, via: "copy", rehashed, seconds: (Date.now() - started) / 1000, fence };
}

/**
 * The downtime with a standby: it replays the old server's last writes, is promoted and stopped, and pg_upgrade
 * --link makes the new cluster of its files. The old server is never stopped (copy-config and verify read it).
 */
/** When the copy was taken: the downtime's start, and the old cluster's write horizon under the fence. */
type CopiedAt = Pick<Marker, "copiedAt" | "copyPoint">;

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

/**
 * Whether pg_upgrade has worked on this new cluster, which must then be initialised again. pg_upgrade removes its
 * output folder when it succeeds, so one left behind is an attempt that stopped; the started flag (written before
 * pg_upgrade runs, removed with the marker that says the upgrade is complete) also finds an attempt whose step was
 * killed after pg_upgrade itself succeeded, which leaves no output folder and a marker still at "prepared".
 */
async function hasPgUpgradeLeftovers(staging: string, major: number): Promise<boolean> {
    const { pgdata } = dataLayout(major);
    const found = await Promise.all([
        existsIn(staging, `${pgdata}/pg_upgrade_output.d`),
        existsIn(staging, startedFlagPath(major)),
    ]);
    return found.some(Boolean);
}

/** In the new cluster's PGDATA from just before pg_upgrade runs until the upgrade's marker says "restored". */
const STARTED_FLAG = "synapse-pg-upgrade-started";

function startedFlagPath(major: number): string {
    return `${dataLayout(major).pgdata}/${STARTED_FLAG}`;
}

/** The started flag, through the stopped staging container (docker cp: no server, no helper container needed). */
async function flagPgUpgradeStarted(staging: string, major: number): Promise<void> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "synapse-pg-flag-"));
    try {
        await fs.writeFile(path.join(dir, STARTED_FLAG), `pg_upgrade started ${new Date().toISOString()}\n`);
        await run("docker", ["cp", path.join(dir, STARTED_FLAG), `${staging}:${startedFlagPath(major)}`]);
    } finally {
        await fs.rm(dir, { recursive: true, force: true });
    }
}

/** The marker that says the upgrade is complete, and the started flag gone with it, in one docker exec. */
async function markUpgraded(staging: string, major: number, marker: Marker): Promise<void> {
    await run(
        "docker",
        [
            "exec",
            "-i",
            "-u",
            "postgres",
            staging,
            "sh",
            "-c",
            'cat > "$1" && rm -f "$2"',
            "sh",
            markerPath(major),
            startedFlagPath(major),
        ],
        { stdin: markerText(marker) },
    );
}

function pgUpgradeContainerName(staging: string): string {
    return `${staging}-pg-upgrade`;
}

/**
 * pg_upgrade's container from an attempt whose step was killed: the daemon removes it when pg_upgrade exits
 * (--rm), but a killed client leaves it running on (holding the new location, which the re-run makes again) or,
 * killed between create and start, there for good, its name taken. Ours (the staging label), so removed.
 */
async function removeLeftoverPgUpgrade(staging: string): Promise<void> {
    const name = pgUpgradeContainerName(staging);
    if (await ourContainer(name, "staging")) await removeContainer(name);
}

async function startAndWait(container: string, superuser: string): Promise<void> {
    const info = await inspectContainer(container);
    if (info && !info.running) await startContainer(container);
    await waitUntilAccepting(container, superuser);
}

/**
 * pg_upgrade in a throw-away container of the new image, the old binaries mounted beside the new data, and either
 * the old data (copied: --copy) or the promoted standby in the new location itself (given away: --link).
 */
async function pgUpgrade(
    input: PgUpgradeInput,
    old: ContainerInfo,
    superuser: string,
    volume: string,
    from: "old" | "standby",
): Promise<void> {
    const pgdata = pgdataOf(old);
    const dataMounts = from === "old" ? mountsHoldingPgdata(old) : [];
    if (from === "old" && dataMounts.length === 0)
        throw new StepError(
            `The old container "${old.name}" has no volume or folder at its PGDATA ${pgdata}; pg_upgrade needs its data files.`,
        );
    const layout = dataLayout(input.major);
    const log = new TailWriter("upgrade: ");
    const args = [
        "run",
        "--rm",
        "--init",
        "--name",
        pgUpgradeContainerName(input.staging),
        "--network",
        "none",
        "--user",
        "postgres",
        ...ourLabels("staging"),
        ...dataMounts.flatMap((m) => ["-v", `${m.type === "volume" ? m.name : m.source}:${OLD_DATA}${m.destination}`]),
        "-v",
        `${input.data.kind === "volume" ? input.data.name : input.data.path}:${layout.mountTarget}`,
        "-v",
        `${volume}:${OLD_ROOT}:ro`,
        "--workdir",
        "/tmp",
        "--entrypoint",
        "pg_upgrade",
        input.image,
        "--old-bindir",
        `${WRAPPERS}`,
        "--old-datadir",
        from === "old" ? `${OLD_DATA}${pgdata}` : standbyDatadirFor(input.major),
        "--new-datadir",
        layout.pgdata,
        "--username",
        superuser,
        "--socketdir",
        "/tmp",
        // The standby's files (one mount, one file system) are linked, never the old data's. --copy-file-range
        // (17+) copies inside the kernel; --no-sync because the step syncs while the servers start.
        ...(from === "standby" ? ["--link"] : input.major >= 17 ? ["--copy-file-range"] : ["--copy"]),
        "--no-sync",
        // Each database's schema dumped and restored side by side. Only under --init (above): without it, at
        // 1 GB, workers failed ("Failure, exiting") in each of 4 runs while pg_upgrade said "Upgrade Complete"
        // with exit 0 and tables had no files (verify caught it); with it, none of 5 did. The likely reason: as
        // a container's PID 1, pg_upgrade also inherits the postmasters its pg_ctl starts, and its waitpid(-1)
        // for "a worker finished" can reap one of those instead and go on too early.
        "--jobs",
        String(Math.min(os.availableParallelism(), 8)),
        // The servers pg_upgrade starts archive no WAL, except the real old cluster's (--copy), whose archive is
        // its own: a promoted standby's or the new cluster's WAL does not belong there (standby.ts, NO_ARCHIVING).
        `--new-options=${NO_ARCHIVING.join(" ")}`,
        ...(from === "standby" ? [`--old-options=${NO_ARCHIVING.join(" ")}`] : []),
    ];
    const exited = await run("docker", args, { stdout: log }).then(
        () => undefined,
        (err: Error) => err,
    );
    if (exited && !(exited instanceof ProcessError)) throw exited;
    const said = pgUpgradeFailure(log.lines, exited !== undefined);
    if (said !== undefined) {
        const server = await serverLogTail(input, layout.pgdata, log.lines.join("\n"));
        throw new StepError(
            `pg_upgrade stopped before the switch, the old cluster is unchanged and running${from === "old" ? " again" : ""}: ${said}${server ? ` (server log: ${server})` : ""}`,
        );
    }
}

/** pg_upgrade names its log files in its failure message; the server's last lines usually say why. */
async function serverLogTail(input: PgUpgradeInput, pgdata: string, output: string): Promise<string> {
    const file = /"([^"]*pg_upgrade_(?:server|internal)\.log)"/.exec(output)?.[1];
    if (!file || !file.startsWith(pgdata)) return "";
    return runWithData(
        input.image,
        [{ data: input.data, target: dataLayout(input.major).mountTarget }],
        ["tail", "-n", "3", file],
    ).then(
        (t) => t.trim().split("\n").join(" | "),
        () => "",
    );
}

/** The old data's owner must be the new image's postgres user, or pg_upgrade cannot read it (mode 0700). */
async function requireSameOwner(old: ContainerInfo, image: string): Promise<void> {
    const pgdata = pgdataOf(old);
    const owner = (await run("docker", ["exec", old.name, "stat", "-c", "%u", pgdata])).stdout.trim();
    const uid = (
        await run("docker", ["run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u", "postgres"])
    ).stdout.trim();
    if (owner !== uid) {
        throw new StepError(
            `The old data belongs to uid ${owner} but ${image} runs PostgreSQL as uid ${uid} (an Alpine image against a Debian one?), so pg_upgrade cannot read it; use the same image family, or set postgres:method to directory.`,
        );
    }
}
