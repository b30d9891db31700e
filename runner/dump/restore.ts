// restore: loads a checked dump into a staging container of the new major on the new data location.
// The staging container is ours alone (label synapse-postgres.role=staging, no alias, no published port); the
// serving container of the new major is declared by Pulumi and created only after verify and cutover.
// A failed or interrupted restore is thrown away and redone: it only ever held a copy of the old data.
import { requireUpgradeWhereItBegan } from "../target/where-it-began";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { checkDump, DumpManifest } from "./manifest";
import { hostFolders } from "../host/folders";
import { formatBytes } from "../host";
import { DumpFilter, FilterCounts } from "./filter";
import { containerLogTail, inspectContainer, removeContainer, startContainer } from "../docker/containers";
import { dbConninfo, query, waitUntilAccepting } from "../docker/psql";
import { DataLocation, formatDataLocation } from "../target/layout";
import { run, runPiped, ProcessError } from "../docker/process";
import { Progress } from "./progress";
import { StepError } from "../step-error";
import {
    advanceMarker,
    emptyTarget,
    makeRoomForStaging,
    Marker,
    ourStaging,
    readTargetState,
    writeMarkerIn,
} from "../target/markers";
import * as path from "node:path";
import { PhaseClock, rehashLoginRole, startStagingContainer } from "../target/staging";

export interface RestoreInput {
    /** Name of the staging container to restore into (created here). */
    container: string;
    /** Image of the new major. */
    image: string;
    /** The new cluster's volume or host folder. */
    data: DataLocation;
    /** The new major (decides where the data is mounted). */
    major: number;
    /** Path of a dump written by the dump step. */
    dumpPath: string;
    /** Password of the bootstrap superuser for the new cluster's first start (from SYNAPSE_PG_PASSWORD). */
    password: string;
    /** The role Synapse logs in as: an md5 hash of it is re-set as scram-sha-256 from `password`. */
    loginUser?: string;
    /** The old cluster's container: no upgrade of it may be under way elsewhere (where-it-began.ts). */
    old?: string;
}

export interface RestoreResult {
    alreadyRestored: boolean;
    /** What the dump filter changed. */
    filtered?: FilterCounts;
    /** The login role whose md5 hash was re-set as scram-sha-256. */
    rehashed?: string;
    setAsideTo?: string;
    manifest: DumpManifest;
}

export async function restoreCluster(input: RestoreInput): Promise<RestoreResult> {
    const manifest = await checkDump(input.dumpPath);
    await requireUpgradeWhereItBegan(input.old, input.container, input.data, input.major);
    const superuser = manifest.source.superuser;
    const existing = await ourStaging(input.container);

    const target = await readTargetState(input.data, input.major, input.image);
    const m = target.marker;
    if (m && m.dump?.sha256 === manifest.sha256 && (m.state === "restored" || m.state === "verified") && existing) {
        if (!existing.running) await startContainer(input.container);
        await waitUntilAccepting(input.container, superuser);
        return { alreadyRestored: true, manifest };
    }
    const setAsideTo = await makeRoomForStaging(input.data, input.major, input.image, target, existing);

    const phases = new PhaseClock("restore");
    try {
        return await loadIntoStaging(input, manifest, superuser, phases, setAsideTo);
    } catch (err) {
        throw await explainFailure(input, err);
    }
}

/**
 * A failure with the staging server gone (killed, out of memory) says so, whatever call noticed it first. A full
 * disk gives its space back at once: the partial copy is ours (the marker says restoring), the old cluster may
 * share that disk and Synapse is about to be started on it again.
 */
async function explainFailure(input: RestoreInput, err: unknown): Promise<unknown> {
    const info = await inspectContainer(input.container).catch(() => undefined);
    // The server's line that says so comes before its shutdown lines: read enough of the log to find it.
    const log = info ? await containerLogTail(input.container, 40).catch(() => "") : "";
    const full = `${(err as Error)?.message ?? ""}\n${log}`
        .split(/\n| \| /)
        .find((l) => /No space left on device|could not extend file/.test(l));
    if (full) {
        await removeContainer(input.container).catch(() => undefined);
        // Only what this restore made: its own marker (or none yet, on the location makeRoomForStaging emptied).
        const state = await readTargetState(input.data, input.major, input.image).catch(() => undefined);
        const ours = state !== undefined && (!state.marker || state.marker.state === "restoring");
        const emptied =
            ours &&
            (await emptyTarget(input.data, input.major, input.image).then(
                () => true,
                () => false,
            ));
        return new StepError(
            `The new cluster's disk (${formatDataLocation(input.data)}) filled up during the restore; ${emptied ? "the partial copy was removed to give the space back" : "the partial copy could not be removed, free the space by hand"}, the old cluster is unchanged, and the next run starts the restore again once there is room (${full.trim()}).`,
        );
    }
    if (info && !info.running) {
        return new StepError(
            `The new PostgreSQL in "${input.container}" stopped during the restore (killed, or out of memory or disk); the old cluster is unchanged and the next run starts the restore again (log: ${await containerLogTail(input.container, 3)}).`,
        );
    }
    if (err instanceof ProcessError) {
        return new StepError(
            `The restore into "${input.container}" failed; the old cluster is unchanged and the next run starts the restore again: ${err.message}`,
        );
    }
    return err;
}

async function loadIntoStaging(
    input: RestoreInput,
    manifest: DumpManifest,
    superuser: string,
    phases: PhaseClock,
    setAsideTo: string | undefined,
): Promise<RestoreResult> {
    await startStaging(input, manifest);
    phases.lap("new server initialised");
    const now = new Date().toISOString();
    let marker: Marker = {
        tool: "synapse-postgres",
        state: "restoring",
        major: input.major,
        method: manifest.method,
        source: {
            container: manifest.source.container,
            version: manifest.source.version,
            imageId: manifest.source.imageId,
            pinned: manifest.source.pinned,
        },
        dump: { path: input.dumpPath, sha256: manifest.sha256 },
        // The copy point is where the dump step fenced the old cluster, just before the dump began.
        copiedAt: manifest.copyPoint?.at ?? manifest.createdAt,
        copyPoint: manifest.copyPoint,
        history: [{ state: "restoring", at: now }],
    };
    await writeMarkerIn(input.container, superuser, marker);

    // Restore-only settings while loading: no fsync, no full-page writes, no autovacuum, large maintenance
    // memory. Safe because a failed or interrupted restore is thrown away and redone from the dump, and the old
    // cluster is never touched. All of them take effect on reload, so the server is not restarted.
    await setSettings(input.container, superuser, RESTORE_ONLY_SETTINGS);
    const filtered =
        manifest.method === "dumpall" ? await loadScript(input, manifest) : await loadDirectory(input, manifest);
    phases.lap("data and indexes loaded");
    // A dump carries no planner statistics: without this Synapse's first queries on the new cluster crawl.
    await run("docker", [
        "exec",
        input.container,
        "vacuumdb",
        "-U",
        superuser,
        "--all",
        "--analyze-only",
        "--quiet",
        "--jobs",
        "2",
    ]);
    phases.lap("statistics gathered");
    const rehashed = await rehashLoginRole(input, superuser);

    // Back to normal settings; CHECKPOINT writes every dirty page and sync makes all of it durable, including
    // what was written while fsync was off.
    await setSettings(
        input.container,
        superuser,
        RESTORE_ONLY_SETTINGS.map(([name]) => [name, undefined]),
    );
    await query(input.container, superuser, "CHECKPOINT");
    await run("docker", ["exec", input.container, "sync"]);
    phases.lap("made durable");
    marker = advanceMarker(marker, "restored");
    await writeMarkerIn(input.container, superuser, marker);
    return { alreadyRestored: false, setAsideTo, manifest, filtered, rehashed };
}

/**
 * Server settings for the load only (see restoreCluster), all reloadable. wal_level=minimal is not among them:
 * it needs a restart and saves nothing for pg_restore, whose tables are created in an earlier transaction than
 * their COPY, so their data is WAL-logged either way.
 */
export const RESTORE_ONLY_SETTINGS: [string, string][] = [
    ["fsync", "off"],
    ["full_page_writes", "off"],
    ["synchronous_commit", "off"],
    ["autovacuum", "off"],
    ["maintenance_work_mem", "512MB"],
    ["max_wal_size", "16GB"],
    ["checkpoint_timeout", "1h"],
    ["max_parallel_maintenance_workers", "2"],
];

/** ALTER SYSTEM SET (or RESET, for an undefined value) and reload. */
export async function setSettings(
    container: string,
    user: string,
    settings: [string, string | undefined][],
): Promise<void> {
    for (const [name, value] of settings) {
        await query(
            container,
            user,
            value === undefined ? `ALTER SYSTEM RESET ${name}` : `ALTER SYSTEM SET ${name} = '${value}'`,
        );
    }
    await query(container, user, "SELECT pg_reload_conf()");
}

async function startStaging(input: RestoreInput, manifest: DumpManifest): Promise<void> {
    await startStagingContainer({
        ...input,
        superuser: manifest.source.superuser,
        locale: manifest.template1,
        // The dump, read-only, for pg_restore inside the container.
        mounts: [`${path.resolve(input.dumpPath)}:${DUMP_MOUNT}:ro`],
    });
}

const DUMP_MOUNT = "/dump";

function psqlArgs(input: RestoreInput, superuser: string, database: string): string[] {
    return [
        "exec",
        "-i",
        input.container,
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        superuser,
        "-d",
        dbConninfo(database),
        "-o",
        "/dev/null",
    ];
}

/**
 * A file of the dump, read where the dump is (the database host's backupDir), through `filter` into psql. psql's
 * own error (ON_ERROR_STOP) is the one reported, not the broken pipe it leaves the reader with.
 */
async function loadFile(
    file: string,
    filter: DumpFilter,
    psql: string[],
    onBytes?: (n: number) => void,
): Promise<void> {
    const counter = new Transform({
        transform(chunk: Buffer, _enc, done) {
            onBytes?.(chunk.length);
            done(null, chunk);
        },
    });
    const [read, passed, loaded] = await Promise.allSettled([
        (await hostFolders()).readInto(file, counter),
        pipeline(counter, filter),
        run("docker", psql, { stdin: filter }),
    ]);
    for (const r of [loaded, read, passed]) if (r.status === "rejected") throw r.reason;
}

/** Turns a failed load into the step's one sentence; the old cluster is never involved in a restore. */
function restoreFailed(input: RestoreInput, what: string, err: unknown): never {
    if (err instanceof ProcessError) {
        throw new StepError(
            `The restore into "${input.container}" stopped at an error in ${what}; the old cluster is unchanged and the next run starts the restore again: ${err.stderrTail}`,
        );
    }
    throw err;
}

/**
 * method dumpall: streams the script into psql with ON_ERROR_STOP, so the first error ends the restore instead of
 * leaving a half-loaded database. DumpFilter removes what the new cluster cannot take (see dump/filter.ts).
 */
async function loadScript(input: RestoreInput, manifest: DumpManifest): Promise<FilterCounts> {
    const su = manifest.source.superuser;
    const progress = new Progress("restore", manifest.bytes);
    let bytes = 0;
    const filter = new DumpFilter(su);
    try {
        await loadFile(input.dumpPath, filter, psqlArgs(input, su, "postgres"), (n) => progress.update((bytes += n)));
    } catch (err) {
        restoreFailed(input, `the script after ${formatBytes(bytes)} of ${formatBytes(manifest.bytes)}`, err);
    }
    progress.done(bytes);
    return filter.counts;
}

/**
 * method directory: globals through psql, then per database the schema (pre-data) through the same filter into
 * psql, the data and the indexes and constraints (post-data) with pg_restore --jobs, all with errors fatal.
 */
async function loadDirectory(input: RestoreInput, manifest: DumpManifest): Promise<FilterCounts> {
    const su = manifest.source.superuser;
    const counts: FilterCounts = { bootstrapRoleSkipped: 0, attverOptionsDropped: 0 };
    const add = (c: FilterCounts) => {
        counts.bootstrapRoleSkipped += c.bootstrapRoleSkipped;
        counts.attverOptionsDropped += c.attverOptionsDropped;
    };
    const globals = new DumpFilter(su);
    try {
        await loadFile(path.join(input.dumpPath, "globals.sql"), globals, psqlArgs(input, su, "postgres"));
    } catch (err) {
        restoreFailed(input, "the roles (globals.sql)", err);
    }
    add(globals.counts);

    // Progress: the new cluster's size against the old one's, polled while pg_restore works.
    const progress = new Progress("restore", manifest.databasesBytes);
    const poll = setInterval(() => {
        query(input.container, su, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database").then(
            ([[n]]) => progress.update(Number(n)),
            () => undefined,
        );
    }, 2000);
    try {
        for (const [db, sub] of Object.entries(manifest.databaseDirs ?? {}))
            add(await loadDatabase(input, su, db, sub));
    } finally {
        clearInterval(poll);
    }
    progress.done(manifest.databasesBytes);
    return counts;
}

/** One database of a directory dump: its schema through the filter into psql, then data and post-data in parallel. */
async function loadDatabase(input: RestoreInput, su: string, db: string, sub: string): Promise<FilterCounts> {
    const dir = `${DUMP_MOUNT}/${sub}`;
    // The postgres database exists already; every other one is created by its own dump (--create), with its
    // encoding, locale, owner and settings.
    const create = db === "postgres" ? [] : ["--create"];
    const schema = new DumpFilter(su);
    const preData = ["exec", input.container, "pg_restore", "--section=pre-data", ...create, "-f", "-", dir];
    await runPiped(
        (stdout) => run("docker", preData, { stdout }),
        (stdin) => run("docker", psqlArgs(input, su, "postgres"), { stdin }),
        schema,
    ).catch((err) => restoreFailed(input, `the schema of ${db}`, err));
    for (const section of ["data", "post-data"]) {
        const restore = [`--section=${section}`, "--jobs=2", "--exit-on-error", "-U", su, "-d", dbConninfo(db), dir];
        await run("docker", ["exec", input.container, "pg_restore", ...restore]).catch((err) =>
            restoreFailed(input, `the ${section} of ${db}`, err),
        );
    }
    return schema.counts;
}
