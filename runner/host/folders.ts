// The database host's folders (postgres:backupDir, a postgres:dataRoot folder, a step's own temporary folders),
// as every step reads and writes them. Two ways to reach them, one interface: this machine's file system when the
// Docker engine runs here, or short-lived helper containers of that engine with the host's root mounted, which
// works wherever the engine is (a remote engine's folders are on its machine, not on the one the step runs on).
import { Readable, Writable } from "node:stream";

export interface HostStat {
    isDirectory: boolean;
    size: number;
    /** The file system it is on: equal for two paths on one disk. */
    device: string;
}

export interface HashedFile {
    /** As given. */
    file: string;
    bytes: number;
    sha256: string;
}

export interface HostFolders {
    /**
     * The `--user` for containers that write into these folders (the dump's tools), so what they write belongs to
     * whoever the other operations run as; undefined: the image's own (root).
     */
    readonly writer: string | undefined;
    /** Undefined when nothing is at the path. */
    stat(p: string): Promise<HostStat | undefined>;
    /** Each file's size, undefined where it is missing. */
    sizes(files: string[]): Promise<(number | undefined)[]>;
    /** Free bytes for an unprivileged writer on the file system of `dir`. */
    freeBytes(dir: string): Promise<number>;
    /** `mkdir -p`, and the folder itself made 0700. */
    makePrivateDir(dir: string): Promise<void>;
    /** A new 0700 folder for files a step mounts into its containers (a password file, a flag). */
    makeTempDir(prefix: string): Promise<string>;
    /** `rm -rf`; nothing at the path is not an error. */
    remove(p: string): Promise<void>;
    rename(from: string, to: string): Promise<void>;
    /** Undefined when the file is missing. */
    readText(file: string): Promise<string | undefined>;
    /** Mode 0600, written whole or not at all (`<file>.partial`, then renamed over). */
    writeTextAtomic(file: string, text: string): Promise<void>;
    /** Every regular file under `root`, or `root` itself when it is a file; sorted. */
    listFiles(root: string): Promise<string[]>;
    /** The bytes of every regular file under `dir`. */
    treeBytes(dir: string): Promise<number>;
    /** Each file made 0600 (they hold password hashes) and hashed. */
    hashPrivate(files: string[]): Promise<HashedFile[]>;
    hash(files: string[]): Promise<HashedFile[]>;
    /** The file's bytes into `sink`. */
    readInto(file: string, sink: Writable): Promise<void>;
    /** `source` into a new 0600 file. */
    writeFrom(file: string, source: Readable): Promise<void>;
    /** A tar stream of `root` (a file or a folder) into `sink`, its entries named from root's basename. */
    readTree(root: string, sink: Writable): Promise<void>;
}

let current: HostFolders | undefined;

/** The folders every step uses; this machine's unless a step said otherwise (useHostFolders). */
export async function hostFolders(): Promise<HostFolders> {
    current ??= (await import("./local")).LOCAL_FOLDERS;
    return current;
}

export function useHostFolders(folders: HostFolders): void {
    current = folders;
}
