// The old major's binaries for pg_upgrade, which no official image ships beside the new ones: taken from the very
// image the old cluster runs. Its file system is unpacked once per image id into a volume, and each program runs
// through the old image's own dynamic loader and libraries, inside the new image (found by reading the old
// postgres's ELF header), so the two C libraries never mix.
import * as os from "node:os";
import { Readable, Writable } from "node:stream";
import { ContainerInfo } from "../docker/containers";
import { run, runPiped } from "../docker/process";
import { StepError } from "../step-error";
import { BINARIES_OF_LABEL, MANAGED_LABEL, UNPACKED_BY_LABEL } from "../names";
import { sleep } from "../host";

/** Where the old image's file system is mounted in the helper containers, and the wrappers of its binaries. */
export const OLD_ROOT = "/synapse-pg-old-root";
export const WRAPPERS = `${OLD_ROOT}/.synapse-pg-bin`;
/** The binaries pg_upgrade runs from the old bin directory. */
const OLD_PROGRAMS = ["postgres", "pg_ctl", "pg_controldata", "pg_resetwal"];
const COMPLETE = ".synapse-pg-complete";

export interface OldBinaries {
    volume: string;
    /** The old bin directory and dynamic loader, as paths inside OLD_ROOT's file system. */
    bindir: string;
    loader: string;
    /** What `postgres -V` of the old binaries says, run inside the new image. */
    version: string;
}

/** An image id as the names of the unpack's volume and lock carry it. */
function shortImageId(imageId: string): string {
    return imageId.replace(/^sha256:/, "").slice(0, 16);
}

/** The container an unpack of the old image exports from, which is also its lock (one per image id). */
export function unpackLockOf(imageId: string): string {
    return `synapse-pg-export-${shortImageId(imageId)}`;
}

/** The volume prepare unpacked the old image into (one per image id). */
export function binariesVolume(old: ContainerInfo): string {
    return `synapse-pg-binaries-${shortImageId(old.imageId)}`;
}

/**
 * The old image's binaries, unpacked once per image id into a volume (the export is the slow part, ~10 s for a
 * Debian image, and happens before Synapse stops), with wrappers that run each program through the old image's
 * own loader and libraries. Probed: `postgres -V` must answer with the old major inside the new image.
 */
export async function oldBinaries(old: ContainerInfo, newImage: string, major?: number): Promise<OldBinaries> {
    const volume = binariesVolume(old);
    const helper = new OldRootHelper(volume, newImage);
    if (
        !(await run("docker", ["volume", "inspect", volume]).then(
            () => true,
            () => false,
        ))
    ) {
        await run("docker", [
            "volume",
            "create",
            "--label",
            `${MANAGED_LABEL}=true`,
            "--label",
            `${BINARIES_OF_LABEL}=${old.imageId}`,
            volume,
        ]);
    }
    const found = await unpackedOnce(old.imageId, unpackLockOf(old.imageId), helper);
    const { stdout } = await helper.run([`${WRAPPERS}/postgres`, "-V"], "postgres").catch((err: Error) => {
        throw new StepError(
            `The old image's PostgreSQL cannot run inside ${newImage} (${err.message.split("\n").pop()}), so pg_upgrade cannot be used with these two images; set postgres:method to directory (dump and restore) and run pulumi up again.`,
        );
    });
    const version = stdout.trim();
    if (major !== undefined && !new RegExp(`\\(PostgreSQL\\) ${major}[.\\s]`).test(version + " ")) {
        throw new StepError(
            `The old image's binaries say "${version}", not PostgreSQL ${major} as the old server runs; set postgres:method to directory.`,
        );
    }
    return { volume, ...found, version };
}

/** Throw-away containers of the new image with the old image's file system mounted at OLD_ROOT. */
class OldRootHelper {
    constructor(
        readonly volume: string,
        readonly image: string,
    ) {}

    run(
        argv: string[],
        user = "root",
        opts: { stdin?: string | Readable; stdout?: Writable; writable?: boolean } = {},
    ) {
        return run(
            "docker",
            [
                "run",
                "--rm",
                "-i",
                "--network",
                "none",
                "--user",
                user,
                "-v",
                `${this.volume}:${OLD_ROOT}${opts.writable ? "" : ":ro"}`,
                "--entrypoint",
                argv[0],
                this.image,
                ...argv.slice(1),
            ],
            { stdin: opts.stdin, stdout: opts.stdout },
        );
    }

    async read(file: string): Promise<string> {
        return (await this.run(["cat", `${OLD_ROOT}/${file}`])).stdout;
    }

    async write(file: string, text: string): Promise<void> {
        await this.run(["install", "-D", "-m", "0755", "/dev/stdin", file], "root", { stdin: text, writable: true });
    }
}

type Unpacked = { bindir: string; loader: string };

/** Another unpack of the same image may run (a rehearsal beside a prepare, two stacks on one host): one at a time. */
const UNPACK_WAIT_ROUNDS = 150;
const UNPACK_WAIT_MS = 2000;

/**
 * The old image unpacked into the volume once. The export's holder container is the lock: made by whoever
 * unpacks, removed when done. A holder left by a process that is gone (killed on this host) is taken over at
 * once; another one is waited for, bounded.
 */
async function unpackedOnce(imageId: string, holder: string, helper: OldRootHelper): Promise<Unpacked> {
    for (let round = 0; round < UNPACK_WAIT_ROUNDS; round++) {
        const found = await readComplete(helper);
        if (found) return found;
        if (await claimHolder(holder, imageId)) {
            try {
                return (await readComplete(helper)) ?? (await unpackInto(holder, imageId, helper));
            } finally {
                await run("docker", ["rm", "-f", "-v", holder]).catch(() => undefined);
            }
        }
        await sleep(UNPACK_WAIT_MS);
    }
    throw new StepError(
        `Another step has been unpacking the old image's binaries for ${(UNPACK_WAIT_ROUNDS * UNPACK_WAIT_MS) / 60000} minutes (the container "${holder}" exists); if none runs, remove it with docker rm -f ${holder} and run pulumi up again.`,
    );
}

async function readComplete(helper: OldRootHelper): Promise<Unpacked | undefined> {
    return helper.read(COMPLETE).then(
        (t) => JSON.parse(t) as Unpacked,
        () => undefined,
    );
}

/** Creates the holder (the lock); one whose creator on this host is gone is removed first. False: another holds it. */
async function claimHolder(holder: string, imageId: string): Promise<boolean> {
    const owner = `${os.hostname()}:${process.pid}`;
    const create = () =>
        run("docker", [
            "create",
            "--name",
            holder,
            "--network",
            "none",
            "--label",
            `${UNPACKED_BY_LABEL}=${owner}`,
            imageId,
        ]);
    try {
        await create();
        return true;
    } catch (err) {
        if (!/Conflict|already in use/.test((err as Error).message)) throw err;
    }
    const { stdout } = await run("docker", [
        "inspect",
        "-f",
        `{{index .Config.Labels "${UNPACKED_BY_LABEL}"}}`,
        holder,
    ]).catch(() => ({ stdout: "" }));
    const [host, pid] = stdout.trim().split(":");
    if (host !== os.hostname() || processAlive(Number(pid))) return false;
    // -v removes only the holder's own, empty anonymous volume (the image's VOLUME), never a named one.
    await run("docker", ["rm", "-f", "-v", holder]).catch(() => undefined);
    return create().then(
        () => true,
        () => false,
    );
}

function processAlive(pid: number): boolean {
    if (!Number.isInteger(pid) || pid <= 0) return false;
    try {
        process.kill(pid, 0);
        return true;
    } catch (err) {
        return (err as NodeJS.ErrnoException).code === "EPERM";
    }
}

/**
 * `docker export` of the holder (a created, never started container of the old image) streamed into tar in the
 * volume, then the wrappers and, last, the completion file.
 */
async function unpackInto(holder: string, imageId: string, helper: OldRootHelper): Promise<Unpacked> {
    await runPiped(
        (stdout) =>
            run("docker", ["export", holder], { stdout }).catch((err: Error) => {
                throw new StepError(`docker export of the old image failed: ${err.message}`);
            }),
        (stdin) => helper.run(["tar", "-x", "-f", "-", "-C", OLD_ROOT], "root", { stdin, writable: true }),
    );
    const bindir = await findBindir(helper, (await imageEnv(imageId)).PATH ?? "");
    const loader = await findLoader(helper, bindir);
    for (const program of OLD_PROGRAMS) {
        // pg_ctl finds postgres beside itself, so it must believe it lives among the wrappers; postgres finds
        // its share and lib folders from its real place in the old image's tree.
        const argv0 = program === "pg_ctl" ? `${WRAPPERS}/${program}` : `${OLD_ROOT}${bindir}/${program}`;
        const libraryPath = libraryDirs(loader)
            .map((d) => `${OLD_ROOT}${d}`)
            .join(":");
        await helper.write(
            `${WRAPPERS}/${program}`,
            `#!/bin/sh\nexec '${OLD_ROOT}${loader}' --library-path '${libraryPath}' --argv0 '${argv0}' '${OLD_ROOT}${bindir}/${program}' "$@"\n`,
        );
    }
    const found = { bindir, loader };
    // Written last: a volume without it is unpacked again.
    await helper.write(`${OLD_ROOT}/${COMPLETE}`, JSON.stringify(found) + "\n");
    return found;
}

async function imageEnv(imageId: string): Promise<Record<string, string>> {
    const { stdout } = await run("docker", ["image", "inspect", "-f", "{{json .Config.Env}}", imageId]);
    return Object.fromEntries(
        ((JSON.parse(stdout) as string[]) ?? []).map((kv) => [
            kv.slice(0, kv.indexOf("=")),
            kv.slice(kv.indexOf("=") + 1),
        ]),
    );
}

/** The first folder of the old image's PATH that holds pg_ctl (Debian: /usr/lib/postgresql/<major>/bin, Alpine: /usr/local/bin). */
async function findBindir(helper: OldRootHelper, pathVar: string): Promise<string> {
    for (const dir of pathVar.split(":").filter((d) => d.startsWith("/"))) {
        if (
            await helper.run(["test", "-x", `${OLD_ROOT}${dir}/pg_ctl`]).then(
                () => true,
                () => false,
            )
        )
            return dir;
    }
    throw new StepError(
        `The old image has no pg_ctl on its PATH (${pathVar}), so pg_upgrade cannot use its binaries; set postgres:method to directory.`,
    );
}

/**
 * The old postgres's ELF interpreter (its dynamic loader), resolved inside the old tree: Debian's /lib64 link is
 * absolute, and followed outside the tree it would load the new image's C library with the old one's.
 */
async function findLoader(helper: OldRootHelper, bindir: string): Promise<string> {
    // The first bytes of a binary: kept as bytes (the helper's usual stdout is decoded as text).
    const chunks: Buffer[] = [];
    await helper.run(["head", "-c", "8192", `${OLD_ROOT}${bindir}/postgres`], "root", {
        stdout: new Writable({
            write(chunk, _enc, done) {
                chunks.push(chunk);
                done();
            },
        }),
    });
    const interp = elfInterpreter(Buffer.concat(chunks));
    if (!interp)
        throw new StepError(
            `The old image's postgres is not a dynamically linked ELF program this tool can run elsewhere; set postgres:method to directory.`,
        );
    const { stdout } = await helper.run(["chroot", OLD_ROOT, "readlink", "-f", interp]);
    return stdout.trim();
}

/** PT_INTERP of a 64-bit little-endian ELF file (x86-64, arm64), from its first bytes. */
export function elfInterpreter(head: Buffer): string | undefined {
    if (head.length < 64 || head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) return undefined;
    const phoff = Number(head.readBigUInt64LE(0x20));
    const phentsize = head.readUInt16LE(0x36);
    const phnum = head.readUInt16LE(0x38);
    for (let i = 0; i < phnum; i++) {
        const at = phoff + i * phentsize;
        if (at + 56 > head.length) return undefined;
        if (head.readUInt32LE(at) !== 3) continue; // PT_INTERP
        const offset = Number(head.readBigUInt64LE(at + 8));
        const size = Number(head.readBigUInt64LE(at + 32));
        if (offset + size > head.length) return undefined;
        return head
            .subarray(offset, offset + size)
            .toString("latin1")
            .replace(/\0+$/, "");
    }
    return undefined;
}

/** Where the old image keeps its libraries: beside its loader (/usr/lib/x86_64-linux-gnu, /lib), and the usual places. */
function libraryDirs(loader: string): string[] {
    const dir = loader.slice(0, loader.lastIndexOf("/")) || "/";
    const triplet = dir.split("/").pop()!;
    const dirs = [dir, "/lib", "/usr/lib", "/usr/local/lib"];
    if (triplet.includes("-linux-")) dirs.push(`/lib/${triplet}`, `/usr/lib/${triplet}`);
    return [...new Set(dirs)];
}
