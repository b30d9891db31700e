// The database host's folders reached two ways: this machine's file system, and helper containers of the Docker
// engine (what a step uses when the engine is elsewhere). Every operation is run both ways on the same folders and
// must give the same answer, byte for byte where there are bytes.
import { strict as assert } from "node:assert";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PassThrough, Readable, Writable } from "node:stream";
import { copyDump } from "../../runner/dump/copy";
import { DumpManifest } from "../../runner/dump/manifest";
import { HostFolders, useHostFolders } from "../../runner/host/folders";
import { LOCAL_FOLDERS } from "../../runner/host/local";
import { EngineFolders } from "../../runner/host/through-engine";
import { requireDockerAndImages, TEST_IMAGE } from "./docker-env";

const WAYS: [string, HostFolders][] = [
    ["this machine's file system", LOCAL_FOLDERS],
    ["helper containers", new EngineFolders(async () => `${TEST_IMAGE}:15`)],
];

async function collect(read: (sink: Writable) => Promise<void>): Promise<Buffer> {
    const chunks: Buffer[] = [];
    const sink = new PassThrough();
    sink.on("data", (c: Buffer) => chunks.push(c));
    await read(sink);
    return Buffer.concat(chunks);
}

describe("the database host's folders, through this machine or through the engine", function () {
    this.timeout(5 * 60 * 1000);
    let root: string;
    // Bytes no text decoder keeps whole: the streams must carry them as they are.
    const binary = Buffer.from(Array.from({ length: 70000 }, (_, i) => (i * 7919) % 256));

    before(async () => {
        await requireDockerAndImages([15]);
        root = await fs.mkdtemp(path.join(os.tmpdir(), "sptest-host-"));
        await fs.mkdir(path.join(root, "dump", "db0"), { recursive: true });
        await fs.writeFile(path.join(root, "dump", "globals.sql"), "CREATE ROLE x;\n");
        await fs.writeFile(path.join(root, "dump", "db0", "toc.dat"), binary);
        await fs.writeFile(path.join(root, "dump", "db0", "empty.dat"), "");
    });
    after(() => fs.rm(root, { recursive: true, force: true }));

    it("stat, sizes, free space, listing and hashes agree", async () => {
        const seen = [];
        for (const [, host] of WAYS) {
            const files = await host.listFiles(path.join(root, "dump"));
            seen.push({
                dir: await host.stat(path.join(root, "dump")),
                file: await host.stat(path.join(root, "dump", "globals.sql")),
                missing: await host.stat(path.join(root, "nothing", "here")),
                sizes: await host.sizes([...files, path.join(root, "missing.dat")]),
                single: await host.listFiles(path.join(root, "dump", "globals.sql")),
                files,
                tree: await host.treeBytes(path.join(root, "dump")),
                hashes: await host.hash(files),
                sameDisk: (await host.stat(root))!.device === (await host.stat(path.join(root, "dump")))!.device,
                free: await host.freeBytes(root),
            });
        }
        const [local, engine] = seen;
        assert.deepEqual(local.files, [
            path.join(root, "dump", "db0", "empty.dat"),
            path.join(root, "dump", "db0", "toc.dat"),
            path.join(root, "dump", "globals.sql"),
        ]);
        assert.equal(local.tree, binary.length + 15);
        assert.equal(local.missing, undefined);
        assert.deepEqual(local.sizes, [0, binary.length, 15, undefined]);
        assert.equal(local.sameDisk, true);
        // Free space moves with whatever else writes to the disk; both must read the same file system.
        assert.ok(Math.abs(local.free - engine.free) < 256 * 1024 * 1024, `free: ${local.free} and ${engine.free}`);
        assert.deepEqual({ ...engine, free: 0 }, { ...local, free: 0 });
    });

    for (const [way, host] of WAYS) {
        it(`${way}: folders made private, files written whole, moved, streamed and removed`, async () => {
            const base = path.join(root, way.replace(/\W+/g, "-"));
            const deep = path.join(base, "a", "b");
            await host.makePrivateDir(deep);
            assert.equal((await fs.stat(deep)).mode & 0o777, 0o700);

            await host.writeTextAtomic(path.join(deep, "m.json"), '{"é": 1}\n');
            assert.equal(await fs.readFile(path.join(deep, "m.json"), "utf8"), '{"é": 1}\n');
            assert.equal((await fs.stat(path.join(deep, "m.json"))).mode & 0o777, 0o600);
            assert.deepEqual(await fs.readdir(deep), ["m.json"]);
            assert.equal(await host.readText(path.join(deep, "m.json")), '{"é": 1}\n');
            assert.equal(await host.readText(path.join(deep, "none.json")), undefined);
            await host.writeTextAtomic(path.join(deep, "empty"), "");
            assert.equal(await host.readText(path.join(deep, "empty")), "");

            await host.writeFrom(path.join(deep, "bin"), Readable.from([binary.subarray(0, 5), binary.subarray(5)]));
            assert.ok((await fs.readFile(path.join(deep, "bin"))).equals(binary));
            assert.equal((await fs.stat(path.join(deep, "bin"))).mode & 0o777, 0o600);
            assert.ok((await collect((sink) => host.readInto(path.join(deep, "bin"), sink))).equals(binary));

            await fs.chmod(path.join(deep, "bin"), 0o644);
            const [hashed] = await host.hashPrivate([path.join(deep, "bin")]);
            assert.equal(hashed.bytes, binary.length);
            assert.equal((await fs.stat(path.join(deep, "bin"))).mode & 0o777, 0o600);

            await host.rename(path.join(base, "a"), path.join(base, "moved"));
            assert.deepEqual(await fs.readdir(base), ["moved"]);
            const temp = await host.makeTempDir("sptest-host-tmp-");
            assert.ok(path.isAbsolute(temp) && (await fs.stat(temp)).isDirectory(), temp);
            assert.equal((await fs.stat(temp)).mode & 0o777, 0o700);
            await host.remove(temp);
            await host.remove(base);
            await host.remove(path.join(root, "not-there"));
            await assert.rejects(fs.stat(base));
            await assert.rejects(fs.stat(temp));
        });

        it(`${way}: the dump copied to this machine (backupCopyDir) is the dump, file for file`, async () => {
            const names = ["dump/db0/empty.dat", "dump/db0/toc.dat", "dump/globals.sql"];
            const sums = await LOCAL_FOLDERS.hash(names.map((n) => path.join(root, n)));
            const files = sums.map((h, i) => ({ path: names[i], bytes: h.bytes, sha256: h.sha256 }));
            const manifest = { dump: "dump", files, bytes: binary.length + 15 } as DumpManifest;
            const copies = path.join(root, `copies-${way.replace(/\W+/g, "-")}`);
            useHostFolders(host);
            try {
                assert.equal(await copyDump(path.join(root, "dump"), manifest, copies), path.join(copies, "dump"));
            } finally {
                useHostFolders(LOCAL_FOLDERS);
            }
            const copied = await LOCAL_FOLDERS.hash(names.map((n) => path.join(copies, n)));
            assert.deepEqual(
                copied.map((h) => h.sha256),
                sums.map((h) => h.sha256),
            );
            assert.deepEqual((await fs.readdir(copies)).sort(), ["dump", "dump.json"]);
        });
    }
});
