// dump: an all-databases dump of the old cluster (roles and password hashes included) into backupDir.
// The file is written as <name>.sql.partial and renamed only after pg_dumpall exited 0 and its own completion line
// was seen, then a manifest (<name>.sql.json) records size and sha256: a file without a matching manifest is never
// taken for a complete dump.
import { createHash } from "node:crypto";
import { createWriteStream, promises as fs } from "node:fs";
import * as path from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { query, requireContainer, serverVersion, superuserOf } from "./docker";
import { run } from "./process";
import { StepError } from "./step-error";
import { Progress } from "./progress";

export interface DumpInput {
    /** The old cluster's container. */
    container: string;
    /** backupDir: an existing host folder. */
    outDir: string;
    /** File name without extension; default `<container>`. */
    name?: string;
    /** Image whose pg_dumpall to use (PostgreSQL recommends the newer version's); default the old container's own. */
    toolImage?: string;
    /** Password for TCP connections when the old cluster does not trust 127.0.0.1 (from SYNAPSE_PG_PASSWORD). */
    password?: string;
}

export interface DatabaseLocale {
    name: string;
    encoding: string;
    collate: string;
    ctype: string;
}

export interface DumpManifest {
    file: string;
    bytes: number;
    sha256: string;
    createdAt: string;
    source: { container: string; image: string; imageId: string; version: string; major: number; superuser: string };
    tool: { image: string };
    databases: DatabaseLocale[];
    /** template1's locale: the new cluster is initialised with it so postgres and template1 match too. */
    template1: DatabaseLocale;
}

export interface DumpResult {
    path: string;
    manifest: DumpManifest;
}

/** pg_dumpall writes this as its last comment; without it the dump stopped early. */
const COMPLETION_LINE = "-- PostgreSQL database cluster dump complete";

export function manifestPathOf(dumpPath: string): string {
    return `${dumpPath}.json`;
}

export async function listDatabases(container: string, user: string): Promise<DatabaseLocale[]> {
    const rows = await query(
        container, user,
        "SELECT datname, pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database ORDER BY datname",
    );
    return rows.map(([name, encoding, collate, ctype]) => ({ name, encoding, collate, ctype }));
}

export async function databasesSize(container: string, user: string): Promise<number> {
    const [[bytes]] = await query(container, user, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database");
    return Number(bytes);
}

/** Free bytes for an unprivileged writer in `dir`. */
export async function freeBytes(dir: string): Promise<number> {
    const s = await fs.statfs(dir);
    return s.bavail * s.bsize;
}

export function formatBytes(n: number): string {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) {
        n /= 1000;
        i++;
    }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export async function dumpCluster(input: DumpInput): Promise<DumpResult> {
    const info = await requireContainer(input.container, "old");
    if (!info.running) throw new StepError(`The old container "${input.container}" is not running, so there is nothing to dump from; start it first.`);
    const superuser = superuserOf(info);
    const version = await serverVersion(input.container, superuser);
    const databases = await listDatabases(input.container, superuser);
    const template1 = databases.find((d) => d.name === "template1")!;

    const outDir = path.resolve(input.outDir);
    const stat = await fs.stat(outDir).catch(() => undefined);
    if (!stat?.isDirectory()) throw new StepError(`The backup folder ${outDir} does not exist; create it (mode 0700) or set postgres:backupDir to an existing folder.`);
    // A text dump holds no indexes, so the databases' on-disk size is a safe upper estimate of its size.
    const needed = await databasesSize(input.container, superuser);
    const free = await freeBytes(outDir);
    if (free < needed) {
        throw new StepError(
            `The backup folder ${outDir} has ${formatBytes(free)} free but the dump may need ${formatBytes(needed)}; free ${formatBytes(needed - free)} there or set postgres:backupDir to a larger disk.`,
        );
    }

    const name = input.name ?? input.container;
    const finalPath = path.join(outDir, `${name}.sql`);
    const partialPath = `${finalPath}.partial`;
    const toolImage = input.toolImage ?? info.image;

    // The dump runs in a throw-away container of the tool image that shares the old container's network
    // namespace, so 127.0.0.1 reaches the old server (trusted by the official image) and nothing is published.
    const args = ["run", "--rm", "--network", `container:${input.container}`, "--entrypoint", "pg_dumpall"];
    if (input.password) args.push("-e", "PGPASSWORD");
    args.push(toolImage, "-h", "127.0.0.1", "-U", superuser, "--no-password", "--quote-all-identifiers");

    const hash = createHash("sha256");
    let bytes = 0;
    let tail = "";
    const progress = new Progress("dump", needed);
    const meter = new Transform({
        transform(chunk: Buffer, _enc, done) {
            hash.update(chunk);
            bytes += chunk.length;
            tail = (tail + chunk.toString("utf8")).slice(-512);
            progress.update(bytes);
            done(null, chunk);
        },
    });
    await fs.rm(partialPath, { force: true });
    const file = createWriteStream(partialPath, { mode: 0o600 });
    // A write error (ENOSPC) destroys the meter, which closes pg_dumpall's stdout: the child stops instead of
    // blocking on a full pipe.
    const writing = pipeline(meter, file);
    const dumping = run("docker", args, { stdout: meter, env: input.password ? { PGPASSWORD: input.password } : {} });
    const [written, dumped] = await Promise.allSettled([writing, dumping]);
    const failure = written.status === "rejected" ? written.reason : dumped.status === "rejected" ? dumped.reason : undefined;
    if (failure) {
        const err = failure as NodeJS.ErrnoException;
        await fs.rm(partialPath, { force: true });
        if (err.code === "ENOSPC") {
            throw new StepError(`The backup folder ${outDir} ran out of space after ${formatBytes(bytes)} of dump; the partial file was removed and nothing else changed.`);
        }
        throw new StepError(`pg_dumpall of "${input.container}" failed after ${formatBytes(bytes)}; the partial file was removed: ${(err as Error).message}`);
    }
    progress.done(bytes);
    if (!tail.includes(COMPLETION_LINE)) {
        await fs.rm(partialPath, { force: true });
        throw new StepError(`pg_dumpall of "${input.container}" ended without its completion line after ${formatBytes(bytes)}; the partial file was removed.`);
    }
    const fd = await fs.open(partialPath, "r");
    await fd.sync();
    await fd.close();
    await fs.rename(partialPath, finalPath);

    const manifest: DumpManifest = {
        file: path.basename(finalPath),
        bytes,
        sha256: hash.digest("hex"),
        createdAt: new Date().toISOString(),
        source: { container: info.name, image: info.image, imageId: info.imageId, version: version.text, major: version.major, superuser },
        tool: { image: toolImage },
        databases,
        template1,
    };
    await writeFileAtomic(manifestPathOf(finalPath), JSON.stringify(manifest, null, 2) + "\n");
    return { path: finalPath, manifest };
}

export async function writeFileAtomic(file: string, text: string): Promise<void> {
    const tmp = `${file}.partial`;
    await fs.writeFile(tmp, text, { mode: 0o600 });
    await fs.rename(tmp, file);
}

/**
 * Reads a dump's manifest and checks the file against it (size and sha256, streamed). A missing manifest, a
 * truncated or altered file: each is refused with a sentence saying which.
 */
export async function checkDump(dumpPath: string): Promise<DumpManifest> {
    const manifestText = await fs.readFile(manifestPathOf(dumpPath), "utf8").catch(() => undefined);
    if (manifestText === undefined) {
        throw new StepError(`The dump ${dumpPath} has no manifest (${path.basename(manifestPathOf(dumpPath))}), so it may be incomplete; run the dump step again.`);
    }
    const manifest: DumpManifest = JSON.parse(manifestText);
    const stat = await fs.stat(dumpPath).catch(() => undefined);
    if (!stat) throw new StepError(`The dump ${dumpPath} is missing although its manifest exists; run the dump step again.`);
    if (stat.size !== manifest.bytes) {
        throw new StepError(`The dump ${dumpPath} is ${stat.size} bytes but its manifest says ${manifest.bytes}: it was truncated or changed; run the dump step again.`);
    }
    const hash = createHash("sha256");
    for await (const chunk of (await fs.open(dumpPath)).createReadStream()) hash.update(chunk as Buffer);
    if (hash.digest("hex") !== manifest.sha256) {
        throw new StepError(`The dump ${dumpPath} does not match the sha256 in its manifest: it was corrupted or changed; run the dump step again.`);
    }
    return manifest;
}
