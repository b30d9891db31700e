// A dump's manifest, <name>.json beside <name>.sql or <name>/, written last: every file's size and sha256. A dump
// without a matching manifest is never taken for a complete one, and restore checks every file against it.
import { createHash } from "node:crypto";
import * as path from "node:path";
import type { CopyPoint } from "../switch/fence";
import { hostFolders } from "../host/folders";
import { StepError } from "../step-error";
import type { DatabaseLocale, DumpMethod } from "./dump";

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

/** <backupDir>/<name>.json for both <name>.sql and <name>/ */
export function manifestPathOf(dumpPath: string): string {
    return `${dumpPath.replace(/\/+$/, "").replace(/\.sql$/, "")}.json`;
}

/** sha256 over the files' sha256 lines. */
export function digestOf(files: DumpedFile[]): string {
    return createHash("sha256")
        .update(files.map((f) => `${f.sha256}  ${f.path}\n`).join(""))
        .digest("hex");
}

/**
 * Every file of a finished dump made 0600 and hashed, and the dump moved from `partialPath` to `finalPath` (an
 * earlier dump of that name and its manifest go only now). Paths are relative to `outDir`, as they are once moved.
 */
export async function hashAndPlace(outDir: string, partialPath: string, finalPath: string): Promise<DumpedFile[]> {
    const host = await hostFolders();
    const hashed = await host.hashPrivate(await host.listFiles(partialPath));
    const files = hashed.map((h) => ({
        path: path.relative(outDir, finalPath + h.file.slice(partialPath.length)),
        bytes: h.bytes,
        sha256: h.sha256,
    }));
    await host.remove(manifestPathOf(finalPath));
    await host.remove(finalPath);
    await host.rename(partialPath, finalPath);
    return files;
}

export async function writeManifest(dumpPath: string, manifest: DumpManifest): Promise<void> {
    await (await hostFolders()).writeTextAtomic(manifestPathOf(dumpPath), JSON.stringify(manifest, null, 2) + "\n");
}

/**
 * Reads a dump's manifest and checks every file against it (size, then sha256). A missing manifest, a missing,
 * truncated or altered file: each is refused with a sentence saying which.
 */
export async function checkDump(dumpPath: string): Promise<DumpManifest> {
    const host = await hostFolders();
    const manifestPath = manifestPathOf(dumpPath);
    const manifestText = await host.readText(manifestPath);
    if (manifestText === undefined) {
        throw new StepError(
            `The dump ${dumpPath} has no manifest (${path.basename(manifestPath)}), so it may be incomplete; run the dump step again.`,
        );
    }
    const manifest: DumpManifest = JSON.parse(manifestText);
    const outDir = path.dirname(manifestPath);
    const files = manifest.files.map((f) => path.join(outDir, f.path));
    const sizes = await host.sizes(files);
    for (const [i, f] of manifest.files.entries()) {
        if (sizes[i] === undefined)
            throw new StepError(
                `The dump file ${files[i]} is missing although the manifest lists it; run the dump step again.`,
            );
        if (sizes[i] !== f.bytes) {
            throw new StepError(
                `The dump file ${files[i]} is ${sizes[i]} bytes but the manifest says ${f.bytes}: it was truncated or changed; run the dump step again.`,
            );
        }
    }
    const hashed = await host.hash(files);
    for (const [i, f] of manifest.files.entries()) {
        if (hashed[i].sha256 !== f.sha256) {
            throw new StepError(
                `The dump file ${hashed[i].file} does not match the sha256 in its manifest: it was corrupted or changed; run the dump step again.`,
            );
        }
    }
    return manifest;
}
