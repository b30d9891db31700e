// The database host's folders through this machine's file system: the engine runs here.
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { run } from "../docker/process";
import { HashedFile, HostFolders, HostStat } from "./folders";

async function stat(p: string): Promise<HostStat | undefined> {
    const s = await fs.stat(p).catch(() => undefined);
    return s && { isDirectory: s.isDirectory(), size: s.size, device: String(s.dev) };
}

async function listFiles(root: string): Promise<string[]> {
    if (!(await fs.stat(root)).isDirectory()) return [root];
    const found: string[] = [];
    for (const entry of await fs.readdir(root, { withFileTypes: true, recursive: true })) {
        // parentPath from Node 20.12; path before it.
        const folder = entry.parentPath ?? (entry as typeof entry & { path: string }).path;
        if (entry.isFile()) found.push(path.join(folder, entry.name));
    }
    return found.sort();
}

async function hashOne(file: string): Promise<HashedFile> {
    const hash = createHash("sha256");
    let bytes = 0;
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
        hash.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
    }
    return { file, bytes, sha256: hash.digest("hex") };
}

async function hash(files: string[]): Promise<HashedFile[]> {
    const out: HashedFile[] = [];
    for (const f of files) out.push(await hashOne(f));
    return out;
}

export const LOCAL_FOLDERS: HostFolders = {
    writer: process.getuid && process.getgid ? `${process.getuid()}:${process.getgid()}` : undefined,
    stat,
    async sizes(files) {
        return Promise.all(files.map(async (f) => (await stat(f))?.size));
    },
    async freeBytes(dir) {
        const s = await fs.statfs(dir);
        return s.bavail * s.bsize;
    },
    async makePrivateDir(dir) {
        await fs.mkdir(dir, { recursive: true, mode: 0o700 });
        await fs.chmod(dir, 0o700);
    },
    async makeTempDir(prefix) {
        return fs.mkdtemp(path.join(os.tmpdir(), prefix));
    },
    async remove(p) {
        await fs.rm(p, { recursive: true, force: true });
    },
    async rename(from, to) {
        await fs.rename(from, to);
    },
    async readText(file) {
        return fs.readFile(file, "utf8").catch(() => undefined);
    },
    async writeTextAtomic(file, text) {
        const tmp = `${file}.partial`;
        await fs.writeFile(tmp, text, { mode: 0o600 });
        await fs.rename(tmp, file);
    },
    listFiles,
    async treeBytes(dir) {
        const sizes = await Promise.all((await listFiles(dir)).map((f) => fs.stat(f).then((s) => s.size)));
        return sizes.reduce((a, b) => a + b, 0);
    },
    async hashPrivate(files) {
        for (const f of files) await fs.chmod(f, 0o600);
        return hash(files);
    },
    hash,
    async readInto(file: string, sink: Writable) {
        await pipeline(createReadStream(file), sink);
    },
    async writeFrom(file: string, source: Readable) {
        await pipeline(source, createWriteStream(file, { mode: 0o600 }));
    },
    async readTree(root: string, sink: Writable) {
        await run("tar", ["-C", path.dirname(root), "-cf", "-", path.basename(root)], { stdout: sink });
    },
};
