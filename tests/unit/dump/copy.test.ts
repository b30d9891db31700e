// The dump's copy on this machine (postgres:backupCopyDir) through this machine's own folders and tar: it counts
// only when every file matches the manifest the database host wrote, and a copy that does not match never replaces
// an earlier good one.
import { strict as assert } from "node:assert";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { copyDump } from "../../../runner/dump/copy";
import { digestOf, DumpManifest, DumpedFile } from "../../../runner/dump/manifest";
import { LOCAL_FOLDERS } from "../../../runner/host/local";

async function hashed(outDir: string, rel: string[]): Promise<DumpedFile[]> {
    const sums = await LOCAL_FOLDERS.hash(rel.map((r) => path.join(outDir, r)));
    return sums.map((h, i) => ({ path: rel[i], bytes: h.bytes, sha256: h.sha256 }));
}

describe("copyDump: a checked copy of the dump on this machine", () => {
    let root: string;
    let backups: string;
    let copies: string;
    let manifest: DumpManifest;

    beforeEach(async () => {
        root = await fs.mkdtemp(path.join(os.tmpdir(), "copy-test-"));
        backups = path.join(root, "backups");
        copies = path.join(root, "copies");
        await fs.mkdir(path.join(backups, "up", "synapse"), { recursive: true });
        await fs.writeFile(path.join(backups, "up", "globals.sql"), "CREATE ROLE synapse;\n", { mode: 0o600 });
        await fs.writeFile(path.join(backups, "up", "synapse", "toc.dat"), Buffer.alloc(300_000, 7), { mode: 0o600 });
        const files = await hashed(backups, ["up/globals.sql", "up/synapse/toc.dat"]);
        manifest = { method: "directory", dump: "up", files, bytes: 300_021, sha256: digestOf(files) } as DumpManifest;
    });

    afterEach(() => fs.rm(root, { recursive: true, force: true }));

    it("copies every file, then the manifest, into a 0700 folder it creates", async () => {
        assert.equal(await copyDump(path.join(backups, "up"), manifest, copies), path.join(copies, "up"));
        assert.deepEqual(await hashed(copies, ["up/globals.sql", "up/synapse/toc.dat"]), manifest.files);
        assert.deepEqual(JSON.parse(await fs.readFile(path.join(copies, "up.json"), "utf8")), manifest);
        assert.equal((await fs.stat(copies)).mode & 0o777, 0o700);
        assert.deepEqual((await fs.readdir(copies)).sort(), ["up", "up.json"]);
    });

    it("refuses a copy whose sha256 differs from the database host's, and keeps the earlier good copy", async () => {
        await copyDump(path.join(backups, "up"), manifest, copies);
        const good = await fs.readFile(path.join(copies, "up.json"), "utf8");
        await fs.writeFile(path.join(backups, "up", "globals.sql"), "CREATE ROLE synapsE;\n");
        const damaged = { ...manifest, createdAt: "later" };
        await assert.rejects(copyDump(path.join(backups, "up"), damaged, copies), {
            message: `The copy of ${backups}/up/globals.sql in ${copies} has sha256 ${(await hashed(backups, ["up/globals.sql"]))[0].sha256} but the database host's manifest says ${manifest.files[0].sha256}: it was damaged on the way; pulumi up again dumps and copies again.`,
        });
        assert.equal(await fs.readFile(path.join(copies, "up.json"), "utf8"), good);
        assert.deepEqual(await hashed(copies, ["up/globals.sql", "up/synapse/toc.dat"]), manifest.files);
        assert.deepEqual((await fs.readdir(copies)).sort(), ["up", "up.json"], "no partial copy is left");
    });

    it("refuses a copy that lacks a file the manifest lists", async () => {
        await fs.rm(path.join(backups, "up", "synapse", "toc.dat"));
        await assert.rejects(copyDump(path.join(backups, "up"), manifest, copies), {
            message: `The copy in ${copies} does not match the dump on the database host: up/synapse/toc.dat did not arrive; pulumi up again dumps and copies again.`,
        });
    });

    it("refuses a backupCopyDir that is a file, before copying anything", async () => {
        await fs.writeFile(copies, "");
        await assert.rejects(copyDump(path.join(backups, "up"), manifest, copies), {
            message: `postgres:backupCopyDir ${copies} is not a folder; set it to a folder on this machine.`,
        });
    });
});
