// pulumi up from a workstation against the database host's Docker engine over SSH (docker:host ssh://...): the
// whole lifecycle runs on the other machine's engine and file system. Deploy 15 into a dataRoot folder there, upgrade
// to 17 by dump (the connection lost half-way, then the upgrade run again; the dump also copied to this machine), revert, upgrade again by pg_upgrade (the reverted 17 set aside beside itself there), retire 15.
// The data is compared row for row through an SSH tunnel to the published port; the folders the config names must
// exist on the engine's machine and never on this one.
import { strict as assert } from "node:assert";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { declare } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { ClusterSnapshot, logicalContent, snapshotCluster } from "../fixtures/snapshot";
import { run } from "../../runner/docker/process";
import { LOCAL_FOLDERS } from "../../runner/host/local";
import { sleep } from "../../runner/host";
import { Applier } from "./applier";
import { containerState, requireDockerAndImages, TEST_IMAGE } from "./docker-env";
import { ENGINE_IMAGE, HERE, RemoteEngine, startRemoteEngine } from "./remote-engine";

const PREFIX = "sptest-remote-";
const PASSWORD = "remote-Pässword-1";
/** Published by the serving cluster on the engine's 127.0.0.1, forwarded here to TUNNEL. */
const PORT = 25491;
const TUNNEL = 25492;
/** Paths of the engine's machine, named in the config; none may ever exist here. */
const ROOT = "/srv/sptest-remote";
const DATA_ROOT = `${ROOT}/data`;
const BACKUPS = `${ROOT}/backups`;

/** The Pulumi CLI as first-run.sh calls it: a stack whose docker:host is STUB_ENGINE; `up` only says where it ran. */
const PULUMI_STUB = `#!/bin/sh
case "$*" in
  whoami|"stack select --create dev"|"config get postgres:password") ;;
  "config get docker:host") echo "$STUB_ENGINE" ;;
  "config get postgres:network") echo "$STUB_NETWORK" ;;
  up) echo "up against $DOCKER_HOST" >> "$STUB_LOG" ;;
  *) echo "unexpected: pulumi $*" >&2; exit 1 ;;
esac
`;

/** ps on this machine: whether a step's process runs now. */
async function stepRunning(step: string): Promise<boolean> {
    const { stdout } = await run("ps", ["-eo", "args"]);
    return stdout.split("\n").some((l) => l.includes(`synapse-pg ${step} `));
}

async function absentHere(p: string): Promise<boolean> {
    return fs.stat(p).then(
        () => false,
        () => true,
    );
}

describe("a Docker engine on another machine, over SSH (docker:host): upgrade, revert, upgrade again, retire", function () {
    this.timeout(20 * 60 * 1000);
    let engine: RemoteEngine | undefined;
    let original: ClusterSnapshot;
    const saved = { DOCKER_HOST: process.env.DOCKER_HOST, PATH: process.env.PATH };
    const login = { port: TUNNEL, user: "synapse", password: PASSWORD };
    const applier = new Applier();
    let base: Record<string, string>;
    /** postgres:backupCopyDir: a folder of this machine, the workstation's copy of the dump. */
    let copies: string;
    const up = async (config: Record<string, string>) => applier.up(await declare({ ...base, ...config }, PASSWORD));
    const onEngineHost = (script: string) => engine!.onHost(script);
    /** The connection cut a second after the step's process started (bounded: 60 s to see it start). */
    const cutDuring = async (step: string): Promise<boolean> => {
        for (let i = 0; i < 600; i++) {
            if (await stepRunning(step)) {
                await sleep(1000);
                await engine!.cut();
                return true;
            }
            await sleep(100);
        }
        return false;
    };

    before(async () => {
        await requireDockerAndImages([15, 17]);
        await run("docker", ["image", "inspect", ENGINE_IMAGE]).catch(() => {
            throw new Error(`${ENGINE_IMAGE} is missing: run npm run images (scripts/build-test-images.sh engine).`);
        });
        assert.ok(await absentHere(ROOT), `${ROOT} exists on this machine before the test; remove it`);
        copies = path.join(await fs.mkdtemp(path.join(os.tmpdir(), PREFIX)), "copies");
        engine = await startRemoteEngine(PREFIX, [15, 17]);
        Object.assign(process.env, engine.env);
        await run("docker", ["network", "create", `${PREFIX}net`]);
        base = {
            "docker:host": engine.dockerHost,
            image: `${TEST_IMAGE}:{version}`,
            network: `${PREFIX}net`,
            containerPrefix: `${PREFIX}pg`,
            port: String(PORT),
            dataRoot: DATA_ROOT,
            backupDir: BACKUPS,
            initdbArgs: "--encoding=UTF8 --lc-collate=C --lc-ctype=C",
        };
    });

    after(async () => {
        for (const [k, v] of Object.entries(saved)) {
            if (v === undefined) delete process.env[k];
            else process.env[k] = v;
        }
        await engine?.remove();
        if (copies) await fs.rm(path.dirname(copies), { recursive: true, force: true });
    });

    it("first-run.sh makes Synapse's network on the stack's engine (docker:host), not on this machine", async () => {
        const bin = await fs.mkdtemp(path.join(os.tmpdir(), `${PREFIX}pulumi-`));
        const network = `${PREFIX}first-run`;
        await fs.writeFile(path.join(bin, "pulumi"), PULUMI_STUB, { mode: 0o755 });
        const env = { PATH: `${bin}:${engine!.env.PATH}`, DOCKER_HOST: "", STUB_NETWORK: network };
        try {
            await run("bash", ["scripts/first-run.sh"], {
                env: { ...env, STUB_ENGINE: engine!.dockerHost, STUB_LOG: path.join(bin, "log") },
            });
            assert.equal(await fs.readFile(path.join(bin, "log"), "utf8"), `up against ${engine!.dockerHost}\n`);
            await run("docker", ["network", "inspect", network]);
            await assert.rejects(run("docker", ["network", "inspect", network], { env: HERE }), / not found/);
        } finally {
            await run("docker", ["network", "rm", network], { env: HERE }).catch(() => undefined);
            await fs.rm(bin, { recursive: true, force: true });
        }
    });

    it("deploys 15 into a dataRoot folder of the engine's machine", async () => {
        await up({ version: "15" });
        assert.equal(await containerState(`${PREFIX}pg15`), "running");
        await seedSynapse(`${PREFIX}pg15`, "synapse", { sizeMB: 2, seed: 11 });
        await engine!.forward(TUNNEL, PORT);
        original = await snapshotCluster(login);
        assert.match(original.version, /^15\./);
        assert.equal((await onEngineHost(`ls ${DATA_ROOT}`)).trim(), "pgsql15");
    });

    it("upgrades 15 -> 17 by dump with the SSH connection lost during the dump: that step fails in one sentence and nothing is lost; reconnected, pulumi up again completes", async () => {
        const config = { version: "17", upgradeFrom: "15", method: "directory", backupCopyDir: copies };
        const cutting = cutDuring("dump");
        await assert.rejects(up(config), (err: Error & { stderr?: string }) => {
            assert.match(err.message, /synapse-pg dump/, err.message);
            const lost = `synapse-pg dump: The connection to the Docker engine at ${engine!.dockerHost} was lost during the step (ssh: connect to host 127.0.0.1: Connection refused); nothing was switched: once it answers again, pulumi up again finishes or redoes what the step began.`;
            assert.equal((err.stderr ?? "").trim().split("\n").pop(), lost);
            return true;
        });
        assert.ok(await cutting, "the connection was cut while the dump step ran");
        await engine!.reconnect();
        assert.equal(await containerState(`${PREFIX}pg17`), "absent", "no switch was made");
        await up(config);
        assert.deepEqual(logicalContent(await snapshotCluster(login)), logicalContent(original));
        assert.equal(await containerState(`${PREFIX}pg15`), "stopped");
        const listing = await onEngineHost(
            `cd ${BACKUPS} && stat -c '%a %n' . upgrade-15-to-17 upgrade-15-to-17.json upgrade-15-to-17/globals.sql`,
        );
        assert.deepEqual(listing.trim().split("\n"), [
            "700 .",
            "700 upgrade-15-to-17",
            "600 upgrade-15-to-17.json",
            "600 upgrade-15-to-17/globals.sql",
        ]);
        const manifest = JSON.parse(await onEngineHost(`cat ${BACKUPS}/upgrade-15-to-17.json`));
        const sums = await onEngineHost(
            `cd ${BACKUPS} && sha256sum ${manifest.files.map((f: any) => f.path).join(" ")}`,
        );
        assert.deepEqual(
            sums.trim().split("\n"),
            manifest.files.map((f: any) => `${f.sha256}  ${f.path}`),
            "the manifest's sums are those of the files on the engine's machine",
        );
        await assertCopyHere(manifest);
    });

    /** The workstation's copy: the engine's manifest, and files whose sums (taken here) it lists; all private. */
    async function assertCopyHere(manifest: { files: { path: string; sha256: string }[] }): Promise<void> {
        const copied = JSON.parse(await fs.readFile(path.join(copies, "upgrade-15-to-17.json"), "utf8"));
        assert.deepEqual(copied, manifest, "the copy's manifest is the engine's");
        const files = await LOCAL_FOLDERS.listFiles(path.join(copies, "upgrade-15-to-17"));
        assert.deepEqual(files, manifest.files.map((f) => path.join(copies, f.path)).sort());
        const hashed = await LOCAL_FOLDERS.hash(manifest.files.map((f) => path.join(copies, f.path)));
        assert.deepEqual(
            hashed.map((h) => h.sha256),
            manifest.files.map((f) => f.sha256),
        );
        const modes = async (p: string) => ((await fs.stat(p)).mode & 0o777).toString(8);
        const named = ["", "/upgrade-15-to-17", "/upgrade-15-to-17.json", "/upgrade-15-to-17/globals.sql"];
        assert.deepEqual(await Promise.all(named.map((n) => modes(copies + n))), ["700", "700", "600", "600"]);
        assert.deepEqual((await fs.readdir(copies)).sort(), ["upgrade-15-to-17", "upgrade-15-to-17.json"]);
    }

    it("reverts to 15: the old cluster serves exactly the data it had", async () => {
        await up({ version: "15" });
        const reverted = await snapshotCluster(login);
        assert.match(reverted.version, /^15\./);
        assert.deepEqual(logicalContent(reverted), logicalContent(original));
    });

    it("upgrades again by pg_upgrade: the reverted 17 is set aside beside itself on the engine's machine", async () => {
        await up({ version: "17", upgradeFrom: "15", method: "pg_upgrade", attempt: "2" });
        const after = await snapshotCluster(login);
        assert.match(after.version, /^17\./);
        assert.deepEqual(logicalContent(after), logicalContent(original));
        const folders = (await onEngineHost(`ls ${DATA_ROOT}`)).trim().split("\n");
        assert.equal(folders.length, 3, folders.join(", "));
        assert.deepEqual(folders.slice(0, 2), ["pgsql15", "pgsql17"]);
        assert.match(folders[2], /^pgsql17\.reverted-\d{8}T\d{6}$/);
    });

    it("retires 15; no path the config names was ever made on this machine", async () => {
        await up({ version: "17" });
        assert.equal(await containerState(`${PREFIX}pg15`), "absent");
        assert.equal(await containerState(`${PREFIX}pg17`), "running");
        assert.match(await onEngineHost(`ls ${DATA_ROOT}`), /pgsql15/, "its folder stays on the engine's machine");
        for (const p of [ROOT, DATA_ROOT, BACKUPS]) assert.ok(await absentHere(p), `${p} exists on this machine`);
    });
});
