// Files inside a container, read and written through the Docker engine (docker cp), never through a host path.
import { Writable } from "node:stream";
import { ProcessError, run } from "./process";

/**
 * A file of a container's file system, running or stopped, through `docker cp` (a tar stream of one file): much
 * cheaper than a throw-away container. Undefined when it is missing.
 */
export async function copyFileOut(container: string, file: string): Promise<Buffer | undefined> {
    const chunks: Buffer[] = [];
    if (!(await copyOut(container, file, (chunk) => chunks.push(chunk)))) return undefined;
    const tar = Buffer.concat(chunks);
    const size = parseInt(tar.subarray(124, 136).toString("latin1").replace(/\0.*$/s, "").trim() || "0", 8);
    return tar.subarray(512, 512 + size);
}

/** Whether a path exists in a container's file system, running or stopped (its tar stream is discarded). */
export async function existsIn(container: string, file: string): Promise<boolean> {
    return copyOut(container, file, () => undefined);
}

/** `docker cp <container>:<path> -`, each chunk of the tar stream to `onChunk`; false when the path is missing. */
async function copyOut(container: string, path: string, onChunk: (chunk: Buffer) => void): Promise<boolean> {
    try {
        await run("docker", ["cp", `${container}:${path}`, "-"], {
            stdout: new Writable({
                write(chunk, _enc, done) {
                    onChunk(chunk);
                    done();
                },
            }),
        });
        return true;
    } catch (err) {
        if (err instanceof ProcessError && /Could not find the file|No such container:path/i.test(err.message))
            return false;
        throw err;
    }
}

/**
 * Writes a file inside a container as the postgres user, so the server owns what it reads. Written aside, its
 * length checked, flushed and renamed over the file: a kill or a full disk half-way (a killed client ends the
 * copy's input early) leaves the previous file whole, never a torn marker or configuration.
 */
export async function writeFileIn(container: string, file: string, text: string): Promise<void> {
    const script =
        'cat > "$1.partial" && [ "$(wc -c < "$1.partial")" -eq "$2" ] && sync "$1.partial" && mv -f "$1.partial" "$1" && sync "$(dirname "$1")"';
    await run(
        "docker",
        ["exec", "-i", "-u", "postgres", container, "sh", "-c", script, "sh", file, String(Buffer.byteLength(text))],
        { stdin: text },
    );
}
