// dump: a complete dump of the old cluster (roles and password hashes included) into backupDir, by one of two
// methods:
// - "directory" (default, fast): `pg_dumpall --globals-only` plus, per database, `pg_dump -Fd -Z0 -j2`, which the
//   restore loads with `pg_restore -j2`. Written into <name>.partial/ and renamed to <name>/ when complete.
// - "dumpall" (the guide's): one `pg_dumpall` script, <name>.sql, streamed through Node with back-pressure,
//   written as <name>.sql.partial and renamed only after pg_dumpall exited 0 and wrote its completion line.
// Either way a manifest, <name>.json, written last, records every file's size and sha256: a dump without a
// matching manifest is never taken for a complete one. Everything is mode 0600 (folders 0700).
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, Dirent, promises as fs } from "node:fs";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { dbConninfo, query, serverVersion } from "../docker/psql";
import { ContainerInfo, requireContainer, superuserOf, pinnedReference } from "../docker/containers";
import { CopyPoint, Fence, takeCopyPoint } from "../switch/fence";
import { run } from "../docker/process";
import { Progress } from "./progress";
import { StepError } from "../step-error";
import { MANAGED_LABEL, TOOL_OF_LABEL } from "../names";
import * as path from "node:path";
import * as os from "node:os";
import { formatBytes, freeBytes, writeFileAtomic } from "../host";

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

export interface DumpedFile {
    /** Relative to backupDir. */
    path: string;
    bytes: number;
    sha256: string;
}

export interface DumpManifest {
    method: DumpMethod;
    /** The dump itself, relative to backupDir: <name>.sql or <name>/ */
    dump: string;
    files: DumpedFile[];
    bytes: number;
    /** sha256 over the files' sha256 lines: one value that names this dump. */
    sha256: string;
    createdAt: string;
    /** The old cluster; `pinned` names exactly the image that wrote its data (recorded for a revert). */
    source: {
        container: string;
        image: string;
        imageId: string;
        pinned?: string;
        version: string;
        major: number;
        superuser: string;
    };
    tool: { image: string };
    databases: DatabaseLocale[];
    /** On-disk size of the old cluster's databases: what the restore's progress is measured against. */
    databasesBytes: number;
    /** directory method: the folder of each database's pg_dump -Fd, relative to the dump. */
    databaseDirs?: Record<string, string>;
    /** template1's locale: the new cluster is initialised with it so postgres and template1 match too. */
    template1: DatabaseLocale;
    /** The old cluster's write horizon under the fence, just before the dump began (the upgrade's dump). */
    copyPoint?: CopyPoint;
}

export interface DumpResult {
    path: string;
    manifest: DumpManifest;
    fence?: Fence;
}

/** pg_dumpall writes this as its last comment; without it the dump stopped early. */
const COMPLETION_LINE = "-- PostgreSQL database cluster dump complete";

/** <backupDir>/<name>.json for both <name>.sql and <name>/ */
export function manifestPathOf(dumpPath: string): string {
    return `${dumpPath.replace(/\/+$/, "").replace(/\.sql$/, "")}.json`;
}

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
    const stat = await fs.stat(outDir).catch(() => undefined);
    if (stat && !stat.isDirectory())
        throw new StepError(`postgres:backupDir ${outDir} is not a folder; set it to a folder for the dump.`);
    if (stat) return false;
    await fs.mkdir(outDir, { recursive: true, mode: 0o700 });
    await fs.chmod(outDir, 0o700);
    return true;
}

/** Refuses before writing anything when backupDir is missing or too small for the dump. */
export async function checkBackupSpace(outDir: string, needed: number): Promise<void> {
    const stat = await fs.stat(outDir).catch(() => undefined);
    if (!stat?.isDirectory())
        throw new StepError(
            `The backup folder ${outDir} does not exist; create it (mode 0700) or set postgres:backupDir to an existing folder.`,
        );
    const free = await freeBytes(outDir);
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
    const passfile = input.password === undefined ? undefined : await writePassfile(input.password);
    const tool: DumpTool = { container: input.container, dump: name, image: toolImage, superuser, passfile };
    const progress = new Progress("dump", databasesBytes);

    await removeLeftoverTools(`${input.container}/${name}`);
    await fs.rm(partialPath, { recursive: true, force: true });
    let databaseDirs: Record<string, string> | undefined;
    try {
        if (method === "dumpall") await dumpAllToFile(tool, partialPath, progress);
        else databaseDirs = await dumpToDirectory(tool, databases, partialPath, input.jobs ?? 2, progress);
    } catch (err) {
        await fs.rm(partialPath, { recursive: true, force: true });
        throw dumpFailed(err, input.container, outDir);
    } finally {
        if (passfile) await fs.rm(path.dirname(passfile), { recursive: true, force: true });
    }

    const files = await replaceWith(outDir, partialPath, finalPath);
    const bytes = files.reduce((s, f) => s + f.bytes, 0);
    progress.done(bytes);

    const manifest: DumpManifest = {
        method,
        dump: path.relative(outDir, finalPath),
        files,
        bytes,
        sha256: createHash("sha256")
            .update(files.map((f) => `${f.sha256}  ${f.path}\n`).join(""))
            .digest("hex"),
        createdAt: new Date().toISOString(),
        source: await sourceOf(info, version, superuser),
        tool: { image: toolImage },
        databases,
        databasesBytes,
        databaseDirs,
        template1: databases.find((d) => d.name === "template1")!,
        copyPoint,
    };
    await writeFileAtomic(manifestPathOf(finalPath), JSON.stringify(manifest, null, 2) + "\n");
    return { path: finalPath, manifest, fence };
}

interface DumpTool {
    container: string;
    /** The dump's name: labels its tool containers, so only this dump's leftovers are ever removed. */
    dump: string;
    image: string;
    superuser: string;
    /** A 0600 libpq password file on this host, for an old cluster whose rules ask 127.0.0.1 for a password. */
    passfile?: string;
}

const PASSFILE_MOUNT = "/run/synapse-pg/pgpass";

/**
 * The password as a libpq password file in a fresh 0700 folder of ours: mounted read-only into the tool
 * containers, so it is never in their environment (docker inspect) and is gone with the folder after the dump.
 */
async function writePassfile(password: string): Promise<string> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "synapse-pg-dump-"));
    const file = path.join(dir, "pgpass");
    await fs.writeFile(file, `*:*:*:*:${password.replace(/\\/g, "\\\\").replace(/:/g, "\\:")}\n`, { mode: 0o600 });
    return file;
}

/** `<old container>/<dump name>` on a dump's tool containers, so a re-run of that dump finds what a killed attempt left. */

/**
 * `docker run` of the tool image sharing the old container's network namespace: 127.0.0.1 reaches the old server
 * (trusted by the official image) and nothing is published. As the calling user, so what it writes is ours.
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
    if (process.getuid && process.getgid) args.push("--user", `${process.getuid()}:${process.getgid()}`);
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
    const out = createWriteStream(file, { mode: 0o600 });
    // A write error (ENOSPC) destroys the meter, which closes pg_dumpall's stdout: it stops instead of blocking.
    const writing = pipeline(meter, out);
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
    await fs.mkdir(dir, { mode: 0o700 });
    // Roles with their password hashes, tablespaces; no completion line is written in globals-only mode.
    await pgDumpAllTo(tool, path.join(dir, "globals.sql"), ["--globals-only"], undefined, false);
    const dirs: Record<string, string> = {};
    const watcher = setInterval(
        () =>
            folderSize(dir).then(
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

/** The complete dump, hashed, takes the place of an earlier one of the same name only now. */
async function replaceWith(outDir: string, partialPath: string, finalPath: string): Promise<DumpedFile[]> {
    const files = await hashFiles(outDir, partialPath, finalPath);
    await fs.rm(manifestPathOf(finalPath), { force: true });
    await fs.rm(finalPath, { recursive: true, force: true });
    await fs.rename(partialPath, finalPath);
    return files;
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

/** The folder a directory entry is in (parentPath from Node 20.12; path before it). */
function folderOf(entry: Dirent): string {
    return entry.parentPath ?? (entry as Dirent & { path: string }).path;
}

async function folderSize(dir: string): Promise<number> {
    let total = 0;
    for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
        if (entry.isFile()) total += (await fs.stat(path.join(folderOf(entry), entry.name))).size;
    }
    return total;
}

/** Every file of the dump with size and sha256, paths as they will be once renamed to `finalPath`. */
async function hashFiles(outDir: string, partialPath: string, finalPath: string): Promise<DumpedFile[]> {
    const stat = await fs.stat(partialPath);
    const found: string[] = [];
    if (stat.isDirectory()) {
        for (const entry of await fs.readdir(partialPath, { withFileTypes: true, recursive: true })) {
            if (entry.isFile()) found.push(path.join(folderOf(entry), entry.name));
        }
    } else {
        found.push(partialPath);
    }
    found.sort();
    const files: DumpedFile[] = [];
    for (const file of found) {
        await fs.chmod(file, 0o600);
        const { bytes, sha256 } = await hashFile(file);
        files.push({ path: path.relative(outDir, finalPath + file.slice(partialPath.length)), bytes, sha256 });
    }
    return files;
}

async function hashFile(file: string): Promise<{ bytes: number; sha256: string }> {
    const hash = createHash("sha256");
    let bytes = 0;
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
        hash.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
    }
    return { bytes, sha256: hash.digest("hex") };
}

/**
 * Reads a dump's manifest and checks every file against it (size, then sha256). A missing manifest, a missing,
 * truncated or altered file: each is refused with a sentence saying which.
 */
export async function checkDump(dumpPath: string): Promise<DumpManifest> {
    const manifestPath = manifestPathOf(dumpPath);
    const manifestText = await fs.readFile(manifestPath, "utf8").catch(() => undefined);
    if (manifestText === undefined) {
        throw new StepError(
            `The dump ${dumpPath} has no manifest (${path.basename(manifestPath)}), so it may be incomplete; run the dump step again.`,
        );
    }
    const manifest: DumpManifest = JSON.parse(manifestText);
    const outDir = path.dirname(manifestPath);
    for (const f of manifest.files) {
        const file = path.join(outDir, f.path);
        const stat = await fs.stat(file).catch(() => undefined);
        if (!stat)
            throw new StepError(
                `The dump file ${file} is missing although the manifest lists it; run the dump step again.`,
            );
        if (stat.size !== f.bytes) {
            throw new StepError(
                `The dump file ${file} is ${stat.size} bytes but the manifest says ${f.bytes}: it was truncated or changed; run the dump step again.`,
            );
        }
    }
    for (const f of manifest.files) {
        const file = path.join(outDir, f.path);
        if ((await hashFile(file)).sha256 !== f.sha256) {
            throw new StepError(
                `The dump file ${file} does not match the sha256 in its manifest: it was corrupted or changed; run the dump step again.`,
            );
        }
    }
    return manifest;
}
