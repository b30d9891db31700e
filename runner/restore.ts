// restore: loads a checked dump into a staging container of the new major on the new data location.
// The staging container is ours alone (label synapse-postgres.role=staging, no alias, no published port); the
// serving container of the new major is declared by Pulumi and created only after verify and cutover.
// A failed or interrupted restore is thrown away and redone: it only ever held a copy of the old data.
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import * as path from "node:path";
import { checkDump, DumpManifest, formatBytes } from "./dump";
import { DumpFilter, FilterCounts } from "./dump-filter";
import { containerLogTail, dbConninfo, inspectContainer, query, quoteIdent, quoteLiteral, removeContainer, startContainer, waitUntilAccepting } from "./docker";
import { DataLocation, dataLayout, formatDataLocation, mountArgument } from "./layout";
import { run, runPiped, ProcessError } from "./process";
import { Progress } from "./progress";
import { setPassword } from "./password";
import { NO_ARCHIVING } from "./standby";
import { StepError } from "./step-error";
import { advanceMarker, emptyTarget, makeRoomForStaging, Marker, ourStaging, readTargetState, writeMarkerIn } from "./target";
import { CLUSTER_LABEL, ourLabels } from "./names";

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
    const full = `${(err as Error)?.message ?? ""}\n${log}`.split(/\n| \| /).find((l) => /No space left on device|could not extend file/.test(l));
    if (full) {
        await removeContainer(input.container).catch(() => undefined);
        // Only what this restore made: its own marker (or none yet, on the location makeRoomForStaging emptied).
        const state = await readTargetState(input.data, input.major, input.image).catch(() => undefined);
        const ours = state !== undefined && (!state.marker || state.marker.state === "restoring");
        const emptied = ours && (await emptyTarget(input.data, input.major, input.image).then(() => true, () => false));
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
        return new StepError(`The restore into "${input.container}" failed; the old cluster is unchanged and the next run starts the restore again: ${err.message}`);
    }
    return err;
}

async function loadIntoStaging(input: RestoreInput, manifest: DumpManifest, superuser: string, phases: PhaseClock, setAsideTo: string | undefined): Promise<RestoreResult> {
    await startStaging(input, manifest);
    phases.lap("new server initialised");
    const now = new Date().toISOString();
    let marker: Marker = {
        tool: "synapse-postgres",
        state: "restoring",
        major: input.major,
        method: manifest.method,
        source: { container: manifest.source.container, version: manifest.source.version, imageId: manifest.source.imageId, pinned: manifest.source.pinned },
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
    const filtered = manifest.method === "dumpall" ? await loadScript(input, manifest) : await loadDirectory(input, manifest);
    phases.lap("data and indexes loaded");
    // A dump carries no planner statistics: without this Synapse's first queries on the new cluster crawl.
    await run("docker", ["exec", input.container, "vacuumdb", "-U", superuser, "--all", "--analyze-only", "--quiet", "--jobs", "2"]);
    phases.lap("statistics gathered");
    const rehashed = await rehashLoginRole(input, superuser);

    // Back to normal settings; CHECKPOINT writes every dirty page and sync makes all of it durable, including
    // what was written while fsync was off.
    await setSettings(input.container, superuser, RESTORE_ONLY_SETTINGS.map(([name]) => [name, undefined]));
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
    ["fsync", "off"], ["full_page_writes", "off"], ["synchronous_commit", "off"], ["autovacuum", "off"],
    ["maintenance_work_mem", "512MB"], ["max_wal_size", "16GB"], ["checkpoint_timeout", "1h"],
    ["max_parallel_maintenance_workers", "2"],
];

/** ALTER SYSTEM SET (or RESET, for an undefined value) and reload. */
export async function setSettings(container: string, user: string, settings: [string, string | undefined][]): Promise<void> {
    for (const [name, value] of settings) {
        await query(container, user, value === undefined ? `ALTER SYSTEM RESET ${name}` : `ALTER SYSTEM SET ${name} = '${value}'`);
    }
    await query(container, user, "SELECT pg_reload_conf()");
}

/**
 * md5 password hashes cannot log in through a scram-sha-256 access rule ("password authentication failed"; the
 * image's rule, until copy-config carries the old cluster's), and PostgreSQL 18 deprecates them, so the Synapse
 * role's md5 hash is replaced by a scram-sha-256 hash of the
 * configured password, after checking that the password is the one the md5 hash was made from. psql's \password
 * computes the scram verifier on the client and sends only that, so a server that logs statements (the carried
 * log_statement = ddl) never logs the password; psql reads it from stdin, never from argv.
 */
export async function rehashLoginRole(input: { container: string; password: string; loginUser?: string }, superuser: string): Promise<string | undefined> {
    const role = input.loginUser ?? "synapse";
    const rows = await query(input.container, superuser, `SELECT rolpassword FROM pg_authid WHERE rolname = ${quoteLiteral(role)}`);
    const hash = rows[0]?.[0] ?? "";
    if (!hash.startsWith("md5")) return undefined;
    if (hash !== "md5" + createHash("md5").update(input.password + role).digest("hex")) {
        throw new StepError(`The role ${role} has an md5 password hash in the old cluster that postgres:password does not match, so it cannot be re-set as scram-sha-256; set postgres:password to the password Synapse uses.`);
    }
    if (/[\r\n]/.test(input.password)) {
        throw new StepError(`The role ${role} has an md5 password hash and postgres:password holds a line break, which psql's \\password cannot read; set the role's password by hand as scram-sha-256 and run pulumi up again.`);
    }
    await setPassword(input.container, superuser, role, input.password);
    const [[stored]] = await query(input.container, superuser, `SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = ${quoteLiteral(role)}`);
    if (stored !== "SCRAM-SHA-256$") throw new StepError(`psql's \\password did not re-set the role ${role} as scram-sha-256; set its password by hand and run pulumi up again.`);
    return role;
}

/** Prints how long each phase of a step took, so a slow upgrade says where its time went. */
export class PhaseClock {
    private last = Date.now();
    constructor(private readonly step: string) {}
    lap(what: string): void {
        const now = Date.now();
        process.stderr.write(`${this.step}: ${what} in ${((now - this.last) / 1000).toFixed(1)} s\n`);
        this.last = now;
    }
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

export interface StagingSpec {
    container: string;
    image: string;
    major: number;
    data: DataLocation;
    /** The old cluster's bootstrap superuser: the new one is bootstrapped as the same role. */
    superuser: string;
    /** The old cluster's template1 locale. */
    locale: { encoding: string; collate: string; ctype: string };
    /** More initdb arguments (data checksums for pg_upgrade). */
    initdbExtra?: string;
    mounts?: string[];
}

/**
 * Starts the staging container: the new image's own first start (initdb, its pg_hba rules) on the new data
 * location, with the old cluster's superuser and template1 locale, so postgres and template1 match too; returns
 * once it accepts connections.
 *
 * The image insists on a password to initialise, and keeps it in the container's environment (docker inspect).
 * The old cluster's roles replace the bootstrap role's password (the dump's ALTER ROLE, pg_upgrade's globals),
 * so it gets a random one used nowhere, cleared as soon as the server accepts: the superuser then has no password
 * until the old one's arrives, exactly as in the old cluster if it had none.
 */
export async function startStagingContainer(spec: StagingSpec): Promise<void> {
    const l = spec.locale;
    const initdbArgs = `--encoding=${l.encoding} --lc-collate=${l.collate} --lc-ctype=${l.ctype}${spec.initdbExtra ? ` ${spec.initdbExtra}` : ""}`;
    await run(
        "docker",
        [
            "run", "-d", "--name", spec.container,
            ...ourLabels("staging"),
            "--label", `${CLUSTER_LABEL}=${spec.major}`,
            // The old roles and databases come from the dump (or pg_upgrade): bootstrap only the superuser the
            // old cluster has (a dump's CREATE ROLE of it is filtered) and no extra database.
            "-e", `POSTGRES_USER=${spec.superuser}`,
            "-e", "POSTGRES_PASSWORD",
            "-e", "POSTGRES_DB=postgres",
            "-e", `POSTGRES_INITDB_ARGS=${initdbArgs}`,
            "-e", `PGDATA=${dataLayout(spec.major).pgdata}`,
            "--shm-size", "256m",
            "--stop-signal", "SIGINT",
            "-v", mountArgument(spec.data, spec.major),
            ...(spec.mounts ?? []).flatMap((m) => ["-v", m]),
            // A copy until the switch: it archives no WAL (standby.ts, NO_ARCHIVING), whatever the copied files say.
            spec.image, "postgres", ...NO_ARCHIVING,
        ],
        { env: { POSTGRES_PASSWORD: randomBytes(24).toString("base64url") } },
    );
    await waitUntilAccepting(spec.container, spec.superuser);
    await query(spec.container, spec.superuser, `ALTER ROLE ${quoteIdent(spec.superuser)} PASSWORD NULL`);
}

const DUMP_MOUNT = "/dump";

function psqlArgs(input: RestoreInput, superuser: string, database: string): string[] {
    return ["exec", "-i", input.container, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", superuser, "-d", dbConninfo(database), "-o", "/dev/null"];
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
 * leaving a half-loaded database. DumpFilter removes what the new cluster cannot take (see dump-filter.ts).
 */
async function loadScript(input: RestoreInput, manifest: DumpManifest): Promise<FilterCounts> {
    const su = manifest.source.superuser;
    const progress = new Progress("restore", manifest.bytes);
    let bytes = 0;
    const source = createReadStream(input.dumpPath);
    source.on("data", (chunk) => progress.update((bytes += chunk.length)));
    const filter = new DumpFilter(su);
    try {
        await run("docker", psqlArgs(input, su, "postgres"), { stdin: source.pipe(filter) });
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
        await run("docker", psqlArgs(input, su, "postgres"), { stdin: createReadStream(path.join(input.dumpPath, "globals.sql")).pipe(globals) });
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
        for (const [db, sub] of Object.entries(manifest.databaseDirs ?? {})) {
            const dir = `${DUMP_MOUNT}/${sub}`;
            // The postgres database exists already; every other one is created by its own dump (--create), with
            // its encoding, locale, owner and settings.
            const create = db === "postgres" ? [] : ["--create"];
            const schema = new DumpFilter(su);
            await runPiped(
                (stdout) => run("docker", ["exec", input.container, "pg_restore", "--section=pre-data", ...create, "-f", "-", dir], { stdout }),
                (stdin) => run("docker", psqlArgs(input, su, "postgres"), { stdin }),
                schema,
            ).catch((err) => restoreFailed(input, `the schema of ${db}`, err));
            add(schema.counts);
            for (const section of ["data", "post-data"]) {
                try {
                    await run("docker", ["exec", input.container, "pg_restore", `--section=${section}`, "--jobs=2", "--exit-on-error", "-U", su, "-d", dbConninfo(db), dir]);
                } catch (err) {
                    restoreFailed(input, `the ${section} of ${db}`, err);
                }
            }
        }
    } finally {
        clearInterval(poll);
    }
    progress.done(manifest.databasesBytes);
    return counts;
}
