// dump: a complete dump of the old cluster (roles and password hashes included) into backupDir, by one of two
// methods:
// - "directory" (default, fast): `pg_dumpall --globals-only` plus, per database, `pg_dump -Fd -Z0 -j2`, which the
//   restore loads with `pg_restore -j2`. Written into <name>.partial/ and renamed to <name>/ when complete.
// - "dumpall" (the guide's): one `pg_dumpall` script, <name>.sql, streamed through Node with back-pressure,
//   written as <name>.sql.partial and renamed only after pg_dumpall exited 0 and wrote its completion line.
// Either way a manifest, <name>.json (manifest.ts), written last, records every file's size and sha256: a dump without a
// matching manifest is never taken for a complete one. Everything is mode 0600 (folders 0700).
import { Transform } from "node:stream";
import { dbConninfo, query, serverVersion } from "../docker/psql";
import { ContainerInfo, requireContainer, superuserOf, pinnedReference } from "../docker/containers";
import { Fence, takeCopyPoint } from "../switch/fence";
import { run } from "../docker/process";
import { Progress } from "./progress";
import { StepError } from "../step-error";
import { MANAGED_LABEL, TOOL_OF_LABEL } from "../names";
import * as path from "node:path";
import { formatBytes } from "../host";
import { hostFolders } from "../host/folders";
import { digestOf, DumpManifest, hashAndPlace, writeManifest } from "./manifest";

export type DumpMethod = "directory" | "dumpall";
export const DUMP_METHODS: DumpMethod[] = ["directory", "dumpall"];

export interface DumpInput {
    /** The old cluster's container. */
    container: string;
    /** backupDir: an existing host folder. */
    outDir: string;
    /** Name of the dump without extension; default `<container>`. */
    name?: string;
    method?: DumpMethod;
    /** Image whose pg_dump to use (PostgreSQL recommends the newer version's); default the old container's own. */
    toolImage?: string;
    /** Password for TCP connections when the old cluster does not trust 127.0.0.1 (from SYNAPSE_PG_PASSWORD). */
    password?: string;
    /** Parallel jobs for pg_dump -j (directory method). */
    jobs?: number;
    /** The upgrade's dump: the old cluster is fenced (fence.ts) before the dump starts. The rehearsal's is not. */
    fence?: boolean;
}

export interface DatabaseLocale {
    name: string;
    encoding: string;
    collate: string;
    ctype: string;
}

export interface DumpResult {
    path: string;
    manifest: DumpManifest;
    fence?: Fence;
}

/** pg_dumpall writes this as its last comment; without it the dump stopped early. */
const COMPLETION_LINE = "-- PostgreSQL database cluster dump complete";

export function dumpPathOf(outDir: string, name: string, method: DumpMethod): string {
    return path.join(outDir, method === "dumpall" ? `${name}.sql` : name);
}

export async function listDatabases(container: string, user: string): Promise<DatabaseLocale[]> {
    const rows = await query(
        container,
        user,
        "SELECT datname, pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database ORDER BY datname",
    );
    return rows.map(([name, encoding, collate, ctype]) => ({ name, encoding, collate, ctype }));
}

export async function databasesSize(container: string, user: string): Promise<number> {
    const [[bytes]] = await query(container, user, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database");
    return Number(bytes);
}

/**
 * Creates backupDir (mode 0700: the dump holds every role's password hash) when it does not exist, and says
 * whether it did. A path that exists but is not a folder is refused.
 */
export async function ensureBackupDir(outDir: string): Promise<boolean> {
    const host = await hostFolders();
    const stat = await host.stat(outDir);
    if (stat && !stat.isDirectory)
        throw new StepError(`postgres:backupDir ${outDir} is not a folder; set it to a folder for the dump.`);
    if (stat) return false;
    await host.makePrivateDir(outDir);
    return true;
}

/** Refuses before writing anything when backupDir is missing or too small for the dump. */
export async function checkBackupSpace(outDir: string, needed: number): Promise<void> {
    const host = await hostFolders();
    if (!(await host.stat(outDir))?.isDirectory)
        throw new StepError(
            `The backup folder ${outDir} does not exist; create it (mode 0700) or set postgres:backupDir to an existing folder.`,
        );
    const free = await host.freeBytes(outDir);
    if (free < needed) {
        throw new StepError(
            `The backup folder ${outDir} has ${formatBytes(free)} free but the dump may need ${formatBytes(needed)}; free ${formatBytes(needed - free)} there or set postgres:backupDir to a larger disk.`,
        );
    }
}

export async function dumpCluster(input: DumpInput): Promise<DumpResult> {
    const info = await requireContainer(input.container, "old");
    if (!info.running)
        throw new StepError(
            `The old container "${input.container}" is not running, so there is nothing to dump from; start it first.`,
        );
    const method = input.method ?? "directory";
    const superuser = superuserOf(info);
    const { fence, copyPoint } = input.fence
        ? await takeCopyPoint(info, superuser)
        : { fence: undefined, copyPoint: undefined };
    const version = await serverVersion(input.container, superuser);
    const databases = await listDatabases(input.container, superuser);
    const outDir = path.resolve(input.outDir);
    // A dump holds no indexes, so the databases' on-disk size is a safe upper estimate of its size.
    const databasesBytes = await databasesSize(input.container, superuser);
    await ensureBackupDir(outDir);
    await checkBackupSpace(outDir, databasesBytes);

    const name = input.name ?? input.container;
    const finalPath = dumpPathOf(outDir, name, method);
    const partialPath = `${finalPath}.partial`;
    const toolImage = input.toolImage ?? info.image;
    const host = await hostFolders();
    const passfile = input.password === undefined ? undefined : await writePassfile(input.password);
    const writer = host.writer;
    const tool: DumpTool = { container: input.container, dump: name, image: toolImage, superuser, passfile, writer };
    const progress = new Progress("dump", databasesBytes);

    await removeLeftoverTools(`${input.container}/${name}`);
    await host.remove(partialPath);
    let databaseDirs: Record<string, string> | undefined;
    try {
        if (method === "dumpall") await dumpAllToFile(tool, partialPath, progress);
        else databaseDirs = await dumpToDirectory(tool, databases, partialPath, input.jobs ?? 2, progress);
    } catch (err) {
        await host.remove(partialPath);
        throw dumpFailed(err, input.container, outDir);
    } finally {
        if (passfile) await host.remove(path.dirname(passfile));
    }

    const files = await hashAndPlace(outDir, partialPath, finalPath);
    const bytes = files.reduce((s, f) => s + f.bytes, 0);
    progress.done(bytes);

    const manifest: DumpManifest = {
        method,
        dump: path.relative(outDir, finalPath),
        files,
        bytes,
        sha256: digestOf(files),
        createdAt: new Date().toISOString(),
        source: await sourceOf(info, version, superuser),
        tool: { image: toolImage },
        databases,
        databasesBytes,
        databaseDirs,
        template1: databases.find((d) => d.name === "template1")!,
        copyPoint,
    };
    await writeManifest(finalPath, manifest);
    return { path: finalPath, manifest, fence };
}

interface DumpTool {
    container: string;
    /** The dump's name: labels its tool containers, so only this dump's leftovers are ever removed. */
    dump: string;
    image: string;
    superuser: string;
    /** Who the tool runs as, so the dump's files are the folder's owner's (HostFolders.writer). */
    writer?: string;
    /** A 0600 libpq password file on the database host, for an old cluster whose rules ask 127.0.0.1 for a password. */
    passfile?: string;
}

const PASSFILE_MOUNT = "/run/synapse-pg/pgpass";

/**
 * The password as a libpq password file in a fresh 0700 folder of ours: mounted read-only into the tool
 * containers, so it is never in their environment (docker inspect) and is gone with the folder after the dump.
 */
async function writePassfile(password: string): Promise<string> {
    const host = await hostFolders();
    const file = path.join(await host.makeTempDir("synapse-pg-dump-"), "pgpass");
    await host.writeTextAtomic(file, `*:*:*:*:${password.replace(/\\/g, "\\\\").replace(/:/g, "\\:")}\n`);
    return file;
}

/** `<old container>/<dump name>` on a dump's tool containers, so a re-run of that dump finds what a killed attempt left. */

/**
 * `docker run` of the tool image sharing the old container's network namespace: 127.0.0.1 reaches the old server
 * (trusted by the official image) and nothing is published. As the folders' writer, so what it writes is ours.
 */
function toolArgs(tool: DumpTool, entrypoint: string, extra: string[] = []): string[] {
    const args = [
        "run",
        "--rm",
        "--network",
        `container:${tool.container}`,
        "--entrypoint",
        entrypoint,
        "--label",
        `${MANAGED_LABEL}=true`,
        "--label",
        `${TOOL_OF_LABEL}=${tool.container}/${tool.dump}`,
    ];
    if (tool.writer) args.push("--user", tool.writer);
    if (tool.passfile) args.push("-v", `${tool.passfile}:${PASSFILE_MOUNT}:ro`, "-e", `PGPASSFILE=${PASSFILE_MOUNT}`);
    return [...args, ...extra, tool.image, "-h", "127.0.0.1", "-U", tool.superuser, "--no-password"];
}

/**
 * Tool containers an earlier, killed attempt at this dump left (a killed `docker run` client leaves its container
 * running, or only created, and --rm never fires): removed before the dump starts again and replaces the partial
 * folder they wrote to. They only ever read the old cluster. Another dump's (a rehearsal's) are not this one's.
 */
async function removeLeftoverTools(toolOf: string): Promise<void> {
    const { stdout } = await run("docker", ["ps", "-aq", "--filter", `label=${TOOL_OF_LABEL}=${toolOf}`]);
    const ids = stdout.split("\n").filter(Boolean);
    if (ids.length) await run("docker", ["rm", "-f", ...ids]);
}

/** Streams one pg_dumpall invocation into a 0600 file, checking for its completion line when `complete`. */
async function pgDumpAllTo(
    tool: DumpTool,
    file: string,
    args: string[],
    progress?: Progress,
    complete = true,
): Promise<void> {
    let bytes = 0;
    let tail = "";
    const meter = new Transform({
        transform(chunk: Buffer, _enc, done) {
            bytes += chunk.length;
            // The completion line is ASCII: decoding only the tail is safe for the check.
            tail = (tail + chunk.subarray(-600).toString("latin1")).slice(-600);
            progress?.update(bytes);
            done(null, chunk);
        },
    });
    // A write error (ENOSPC) destroys the meter, which closes pg_dumpall's stdout: it stops instead of blocking.
    const writing = (await hostFolders()).writeFrom(file, meter);
    const dumping = run("docker", [...toolArgs(tool, "pg_dumpall"), "--quote-all-identifiers", ...args], {
        stdout: meter,
    });
    const [written, dumped] = await Promise.allSettled([writing, dumping]);
    if (written.status === "rejected") throw written.reason;
    if (dumped.status === "rejected") throw dumped.reason;
    if (complete && !tail.includes(COMPLETION_LINE)) {
        throw new StepError(
            `pg_dumpall of "${tool.container}" ended without its completion line after ${formatBytes(bytes)}.`,
        );
    }
}

async function dumpAllToFile(tool: DumpTool, file: string, progress: Progress): Promise<void> {
    await pgDumpAllTo(tool, file, [], progress);
}

async function dumpToDirectory(
    tool: DumpTool,
    databases: DatabaseLocale[],
    dir: string,
    jobs: number,
    progress: Progress,
): Promise<Record<string, string>> {
    const host = await hostFolders();
    await host.makePrivateDir(dir);
    // Roles with their password hashes, tablespaces; no completion line is written in globals-only mode.
    await pgDumpAllTo(tool, path.join(dir, "globals.sql"), ["--globals-only"], undefined, false);
    const dirs: Record<string, string> = {};
    const watcher = setInterval(
        () =>
            host.treeBytes(dir).then(
                (n) => progress.update(n),
                () => undefined,
            ),
        1000,
    );
    try {
        // template0 is never dumped; template1 carries nothing Synapse needs and is recreated by initdb.
        for (const [i, db] of databases.filter((d) => d.name !== "template0" && d.name !== "template1").entries()) {
            // Folder names by position: database names may hold characters a path should not.
            const sub = `db${i}`;
            dirs[db.name] = sub;
            await run("docker", [
                ...toolArgs(tool, "pg_dump", ["-v", `${dir}:/out`]),
                "--format=directory",
                "--compress=0",
                `--jobs=${jobs}`,
                "--quote-all-identifiers",
                "--file",
                `/out/${sub}`,
                `--dbname=${dbConninfo(db.name)}`,
            ]);
        }
    } finally {
        clearInterval(watcher);
    }
    return dirs;
}

/** A failed dump in one sentence: a full disk says so; the partial dump is already gone. */
function dumpFailed(err: unknown, container: string, outDir: string): StepError {
    if ((err as NodeJS.ErrnoException).code === "ENOSPC" || /No space left on device/.test((err as Error).message)) {
        return new StepError(
            `The backup folder ${outDir} ran out of space during the dump; the partial dump was removed and nothing else changed.`,
        );
    }
    if (err instanceof StepError) return err;
    return new StepError(
        `The dump of "${container}" failed; the partial dump was removed and nothing else changed: ${(err as Error).message}`,
    );
}

/** The old cluster as the manifest records it: a revert is checked to run exactly this image. */
async function sourceOf(
    info: ContainerInfo,
    version: { text: string; major: number },
    superuser: string,
): Promise<DumpManifest["source"]> {
    const pinned = await pinnedReference(info.imageId);
    return {
        container: info.name,
        image: info.image,
        imageId: info.imageId,
        pinned,
        version: version.text,
        major: version.major,
        superuser,
    };
}
