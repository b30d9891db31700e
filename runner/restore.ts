// restore: loads a checked dump into a staging container of the new major on the new data location.
// The staging container is ours alone (label synapse-postgres.role=staging, no alias, no published port); the
// serving container of the new major is declared by Pulumi and created only after verify and cutover.
// A failed or interrupted restore is thrown away and redone: it only ever held a copy of the old data.
import { createReadStream } from "node:fs";
import { checkDump, DumpManifest, formatBytes } from "./dump";
import { DumpFilter, FilterCounts } from "./dump-filter";
import { inspectContainer, MANAGED_LABEL, removeContainer, startContainer, waitUntilAccepting } from "./docker";
import { DataLocation, dataLayout, formatDataLocation, mountArgument } from "./layout";
import { run, ProcessError } from "./process";
import { Progress } from "./progress";
import { StepError } from "./step-error";
import { advanceMarker, emptyTarget, hasServed, Marker, readTargetState, requireUnused, setAside, writeMarkerIn } from "./target";

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
}

export interface RestoreResult {
    alreadyRestored: boolean;
    /** What the dump filter changed. */
    filtered?: FilterCounts;
    setAsideTo?: string;
    manifest: DumpManifest;
}

export const STAGING_ROLE_LABEL = "synapse-postgres.role=staging";

export async function restoreCluster(input: RestoreInput): Promise<RestoreResult> {
    const manifest = await checkDump(input.dumpPath);
    const superuser = manifest.source.superuser;
    const existing = await inspectContainer(input.container);
    if (existing && existing.labels["synapse-postgres.role"] !== "staging") {
        throw new StepError(`A container named "${input.container}" exists that synapse-postgres did not create; rename or remove it, it is not ours to replace.`);
    }

    const target = await readTargetState(input.data, input.major, input.image);
    const where = formatDataLocation(input.data);
    let setAsideTo: string | undefined;
    if (target.marker) {
        const m = target.marker;
        if (m.dump.sha256 === manifest.sha256 && (m.state === "restored" || m.state === "verified") && existing) {
            if (!existing.running) await startContainer(input.container);
            await waitUntilAccepting(input.container, superuser);
            return { alreadyRestored: true, manifest };
        }
        if (hasServed(m)) {
            // This copy served Synapse after an earlier cutover (then a revert): it may hold writes the old
            // cluster lacks. Keep every byte of it elsewhere before reusing the location.
            if (existing) await removeContainer(input.container);
            await requireUnused(input.data);
            setAsideTo = await setAside(input.data, input.major, input.image);
        }
    } else if (!target.isEmpty && !existing) {
        throw new StepError(
            `The new data location ${where} already holds files synapse-postgres did not create (${target.entries.slice(0, 5).join(", ")}); move them away or choose another postgres:dataRoot, they are never deleted by this tool.`,
        );
    }
    // What is left is empty, or a staging copy of ours that never served: safe to redo from the dump.
    if (existing) await removeContainer(input.container);
    await requireUnused(input.data);
    if (!target.isEmpty && !setAsideTo) await emptyTarget(input.data, input.major, input.image);

    await startStaging(input, manifest);
    await waitUntilAccepting(input.container, superuser);
    const now = new Date().toISOString();
    let marker: Marker = {
        tool: "synapse-postgres",
        state: "restoring",
        major: input.major,
        source: { container: manifest.source.container, version: manifest.source.version },
        dump: { path: input.dumpPath, sha256: manifest.sha256 },
        history: [{ state: "restoring", at: now }],
    };
    await writeMarkerIn(input.container, superuser, marker);

    const filtered = await loadDump(input, manifest);
    // pg_dumpall carries no planner statistics: without this Synapse's first queries on the new cluster crawl.
    await run("docker", ["exec", input.container, "vacuumdb", "-U", superuser, "--all", "--analyze-only", "--quiet", "--jobs", "2"]);
    marker = advanceMarker(marker, "restored");
    await writeMarkerIn(input.container, superuser, marker);
    return { alreadyRestored: false, setAsideTo, manifest, filtered };
}

async function startStaging(input: RestoreInput, manifest: DumpManifest): Promise<void> {
    const t = manifest.template1;
    // The new cluster gets the old one's template1 locale, so postgres and template1 match too; the databases
    // themselves are created by the dump with their own encoding and locale.
    const initdbArgs = `--encoding=${t.encoding} --lc-collate=${t.collate} --lc-ctype=${t.ctype}`;
    await run(
        "docker",
        [
            "run", "-d", "--name", input.container,
            "--label", `${MANAGED_LABEL}=true`, "--label", STAGING_ROLE_LABEL,
            "--label", `synapse-postgres.cluster=${input.major}`,
            // The dump's roles and databases are created by the dump itself: bootstrap only the superuser the
            // dump was taken as (its CREATE ROLE is filtered below) and no extra database.
            "-e", `POSTGRES_USER=${manifest.source.superuser}`,
            "-e", "POSTGRES_PASSWORD",
            "-e", "POSTGRES_DB=postgres",
            "-e", `POSTGRES_INITDB_ARGS=${initdbArgs}`,
            "-e", `PGDATA=${dataLayout(input.major).pgdata}`,
            "--shm-size", "256m",
            "-v", mountArgument(input.data, input.major),
            input.image,
        ],
        { env: { POSTGRES_PASSWORD: input.password } },
    );
}

/**
 * Streams the dump into psql with ON_ERROR_STOP, so the first error ends the restore instead of leaving a
 * half-loaded database. DumpFilter removes what the new cluster cannot take (see dump-filter.ts).
 */
async function loadDump(input: RestoreInput, manifest: DumpManifest): Promise<FilterCounts> {
    const su = manifest.source.superuser;
    const progress = new Progress("restore", manifest.bytes);
    let bytes = 0;
    const source = createReadStream(input.dumpPath);
    source.on("data", (chunk) => progress.update((bytes += chunk.length)));
    const filter = new DumpFilter(su);
    try {
        await run(
            "docker",
            ["exec", "-i", input.container, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", su, "-d", "postgres", "-o", "/dev/null"],
            { stdin: source.pipe(filter) },
        );
    } catch (err) {
        if (err instanceof ProcessError) {
            throw new StepError(
                `The restore into "${input.container}" stopped at an error after ${formatBytes(bytes)} of ${formatBytes(manifest.bytes)}; the old cluster is unchanged and the next run starts the restore again: ${err.stderrTail}`,
            );
        }
        throw err;
    }
    progress.done(bytes);
    return filter.counts;
}
