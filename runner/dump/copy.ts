// A second copy of a finished dump on the machine the step runs on (postgres:backupCopyDir): the workstation, when
// Docker is another machine's. One tar stream from the database host, hashed here after it lands and compared
// with the manifest the database host wrote: the copy counts only when every file's sha256 matches on both sides.
// It is moved into place, and its manifest written, only then; an earlier copy of that name goes only then too.
import * as path from "node:path";
import { Transform } from "node:stream";
import { runPiped, run } from "../docker/process";
import { hostFolders } from "../host/folders";
import { LOCAL_FOLDERS } from "../host/local";
import { formatBytes } from "../host";
import { StepError } from "../step-error";
import { DumpManifest, manifestPathOf } from "./manifest";
import { Progress } from "./progress";

/** Creates `copyDir` here (0700) when missing, and refuses before the downtime when it cannot hold `bytes`. */
export async function checkCopyDir(copyDir: string, bytes: number): Promise<void> {
    const here = LOCAL_FOLDERS;
    const found = await here.stat(copyDir);
    if (found && !found.isDirectory)
        throw new StepError(`postgres:backupCopyDir ${copyDir} is not a folder; set it to a folder on this machine.`);
    if (!found) await here.makePrivateDir(copyDir);
    const free = await here.freeBytes(copyDir);
    if (free < bytes) {
        throw new StepError(
            `The folder ${copyDir} on this machine has ${formatBytes(free)} free but the dump's copy may need ${formatBytes(bytes)}; free ${formatBytes(bytes - free)} there or set postgres:backupCopyDir to a larger disk.`,
        );
    }
}

/** Copies the dump at `dumpPath` (on the database host) into `copyDir` here; returns the copy's path. */
export async function copyDump(dumpPath: string, manifest: DumpManifest, copyDir: string): Promise<string> {
    await checkCopyDir(copyDir, manifest.bytes);
    const here = LOCAL_FOLDERS;
    const finalPath = path.join(copyDir, path.basename(dumpPath));
    // Beside the copy, so the last move is a rename on one file system; a killed copy's leftover goes first.
    const landing = `${finalPath}.partial`;
    await here.remove(landing);
    await here.makePrivateDir(landing);
    try {
        await receive(dumpPath, landing, copyDir, manifest.bytes);
        await compare(manifest, path.dirname(dumpPath), landing, copyDir);
        await here.remove(manifestPathOf(finalPath));
        await here.remove(finalPath);
        await here.rename(path.join(landing, path.basename(dumpPath)), finalPath);
        await here.writeTextAtomic(manifestPathOf(finalPath), JSON.stringify(manifest, null, 2) + "\n");
        return finalPath;
    } finally {
        await here.remove(landing);
    }
}

async function receive(dumpPath: string, landing: string, copyDir: string, bytes: number): Promise<void> {
    const host = await hostFolders();
    const progress = new Progress("dump: copy", bytes);
    let done = 0;
    const counting = new Transform({
        transform(chunk: Buffer, _enc, next) {
            done += chunk.length;
            progress.update(done);
            next(null, chunk);
        },
    });
    try {
        await runPiped(
            (sink) => host.readTree(dumpPath, sink),
            // --ignore-zeros: tar reads to the stream's end, not only to the archive's end marker, so the padding
            // after it is drained and the sender does not see a closed pipe.
            (source) => run("tar", ["-x", "--ignore-zeros", "--no-same-owner", "-C", landing], { stdin: source }),
            counting,
        );
    } catch (err) {
        throw new StepError(
            `The dump could not be copied to ${copyDir} on this machine (${(err as Error).message.split("\n").pop()}); the dump on the database host is complete, and pulumi up again dumps and copies again.`,
        );
    }
    progress.done(done);
}

/** Every file the manifest lists, and no other, with its size and sha256, under `landing`. */
async function compare(manifest: DumpManifest, outDir: string, landing: string, copyDir: string): Promise<void> {
    const landed = await LOCAL_FOLDERS.listFiles(path.join(landing, manifest.dump));
    const expected = manifest.files.map((f) => path.join(landing, f.path)).sort();
    const extra = landed.find((f) => !expected.includes(f));
    const missing = expected.find((f) => !landed.includes(f));
    const why = extra
        ? `${path.relative(landing, extra)} arrived but the manifest does not list it`
        : missing && `${path.relative(landing, missing)} did not arrive`;
    if (why) {
        throw new StepError(
            `The copy in ${copyDir} does not match the dump on the database host: ${why}; pulumi up again dumps and copies again.`,
        );
    }
    const hashed = await LOCAL_FOLDERS.hash(manifest.files.map((f) => path.join(landing, f.path)));
    for (const [i, f] of manifest.files.entries()) {
        if (hashed[i].sha256 !== f.sha256 || hashed[i].bytes !== f.bytes) {
            throw new StepError(
                `The copy of ${path.join(outDir, f.path)} in ${copyDir} has sha256 ${hashed[i].sha256} but the database host's manifest says ${f.sha256}: it was damaged on the way; pulumi up again dumps and copies again.`,
            );
        }
    }
}
