// Every command of an upgrade and of a revert killed half-way (SIGKILL of the step and of every process it started,
// as a lost session, an OOM kill or a reboot of the machine running pulumi up would), then pulumi up again, until
// it completes: in between at most one running server answers to the alias, every failure is a kill we made (a
// re-run never trips over what a killed step left), the upgrade ends with the data row for row, and the revert
// with the old data exactly as it was. The kill points come from a clean run of the same upgrade and revert: each
// command is killed once its step has finished a third (then two thirds) of the child processes (docker, psql,
// pg_upgrade) the clean run saw it start, so the points fall inside each step's work whatever the machine's speed.
// Method pg_upgrade gets both rounds; the dump method (directory) one, at half of each step's work.
import { strict as assert } from "node:assert";
import { spawn } from "node:child_process";
import { run } from "../../runner/docker/process";
import { declare } from "../fixtures/pulumi-graph";
import { seedSynapse } from "../fixtures/seed";
import { ClusterSnapshot, logicalContent, snapshotCluster } from "../fixtures/snapshot";
import { Applier, REPO } from "./applier";
import { endSuite, startSuite, Suite, volumesNamed } from "./docker-env";

const PREFIX = "sptest-kill-";
const PASSWORD = "kill-Pässword-7";
const PORT = 25441;
/** The line SYNAPSE_PG_TRACE=1 prints as each child process of a step ends. */
const TRACED = /^trace \+\d+ms \d+ms /gm;
type Method = "pg_upgrade" | "directory";
const ROUNDS: { method: Method; fraction: number; said: string }[] = [
    { method: "pg_upgrade", fraction: 1 / 3, said: "a third" },
    { method: "pg_upgrade", fraction: 2 / 3, said: "two thirds" },
    { method: "directory", fraction: 1 / 2, said: "half" },
];

interface Ran {
    stdout: string;
    stderr: string;
    /** Child processes the step saw end. */
    children: number;
    killed: boolean;
}

/** Runs a command traced; kills its whole process group once `after` of its child processes have ended. */
function runKilledAfter(line: string, env: Record<string, string>, after: number): Promise<Ran> {
    return new Promise((resolve, reject) => {
        const traced = { ...process.env, ...env, SYNAPSE_PG_TRACE: "1" };
        const child = spawn("/bin/sh", ["-c", line], { cwd: REPO, env: traced, detached: true });
        let [stdout, stderr, children, killed] = ["", "", 0, false];
        child.stdout.on("data", (d) => (stdout += d));
        child.stderr.on("data", (d) => {
            stderr += d;
            children = stderr.match(TRACED)?.length ?? 0;
            if (!killed && children >= after) {
                killed = true;
                process.kill(-child.pid!, "SIGKILL");
            }
        });
        child.on("error", reject);
        child.on("close", (code) => {
            if (killed || code === 0) resolve({ stdout, stderr, children, killed });
            else reject(new Error(`command failed (${code}): ${line}\n${stderr.trim()}`));
        });
    });
}

describe("every command of an upgrade and a revert killed half-way: pulumi up again converges", function () {
    this.timeout(45 * 60 * 1000);
    const login = { port: PORT, user: "synapse", password: PASSWORD };
    let suite: Suite | undefined;
    let base: Record<string, string>;
    let original: ClusterSnapshot;
    /** Child processes each command started in the clean run of each method, by resource name, in the order they ran. */
    const clean = new Map<Method, Map<string, number>>();
    let recording: Map<string, number> | undefined;
    let method: Method = "pg_upgrade";
    /** The kills still to make, by resource name: after how many child processes. */
    const planned = new Map<string, number>();
    const made: string[] = [];
    const applier = new Applier(undefined, async (r, line, env) => {
        const after = planned.get(r.name) ?? Infinity;
        const ran = await runKilledAfter(line, env, after);
        recording?.set(r.name, ran.children);
        if (!ran.killed) return ran;
        planned.delete(r.name);
        made.push(`${r.name} after ${after} of ${clean.get(method)!.get(r.name)}`);
        throw new Error(`killed ${r.name} after ${after} child process(es)`);
    });
    const config = (extra: Record<string, string>) => ({ ...base, method, ...extra });
    const upgrade = () => config({ version: "17", upgradeFrom: "15" });
    const revert = () => config({ version: "15" });
    const up = async (cfg: Record<string, string>) => applier.up(await declare(cfg, PASSWORD));

    /** The running containers that answer to db on the stack's network. */
    async function serversUnderAlias(): Promise<string[]> {
        const ids = (await run("docker", ["ps", "-q", "--filter", `network=${PREFIX}net`])).stdout.split("\n");
        const names: string[] = [];
        for (const id of ids.filter(Boolean)) {
            const [info] = JSON.parse((await run("docker", ["inspect", id])).stdout);
            if (info.NetworkSettings.Networks[`${PREFIX}net`]?.Aliases?.includes("db")) names.push(info.Name.slice(1));
        }
        return names;
    }

    /** Plans a kill of every command the clean run of `names` started children in, at `fraction` of them. */
    function planKills(names: string[], fraction: number): void {
        for (const name of names) {
            const n = clean.get(method)!.get(name) ?? 0;
            // One child or none: nothing to kill inside.
            if (n >= 2) planned.set(name, Math.min(n - 1, Math.max(1, Math.round(n * fraction))));
        }
    }

    /** pulumi up again after each kill, as a user would, until it completes; one re-run per kill at most. */
    async function upUntilDone(cfg: Record<string, string>): Promise<number> {
        const kills = planned.size;
        for (let attempt = 1; attempt <= kills + 1; attempt++) {
            try {
                await up(cfg);
                return attempt;
            } catch (err) {
                assert.match((err as Error).message, /^killed /, "a re-run failed for a reason other than our kill");
                const serving = await serversUnderAlias();
                assert.ok(serving.length <= 1, `two servers answer to db: ${serving.join(", ")}`);
            }
        }
        assert.fail(`pulumi up did not complete after ${kills} kills and as many re-runs`);
    }

    async function expectServes(major: number): Promise<void> {
        const now = await snapshotCluster(login);
        assert.match(now.version, new RegExp(`^${major}\\.`));
        assert.deepEqual(logicalContent(now), logicalContent(original));
        assert.equal((await serversUnderAlias()).length, 1, "one server answers to db");
    }

    /** Back to 15 serving with no 17 data, so the next round starts where the first did. */
    async function withoutNewData(): Promise<void> {
        for (const v of await volumesNamed(`${PREFIX}pgsql17`)) await run("docker", ["volume", "rm", "-f", v]);
        applier.state.delete("pg17-data");
    }

    before(async () => {
        suite = await startSuite(PREFIX, PORT, [15, 17]);
        base = suite.base;
        await up(revert());
        await seedSynapse(`${PREFIX}pg15`, "synapse", { sizeMB: 8, seed: 11 });
        original = await snapshotCluster(login);
        // The clean runs that set the kill points: each command's child processes, upgrade and revert.
        for (const m of new Set(ROUNDS.map((r) => r.method))) {
            method = m;
            clean.set(m, (recording = new Map()));
            try {
                await up(upgrade());
                await up(revert());
            } finally {
                recording = undefined;
            }
            await withoutNewData();
        }
    });
    after(() => endSuite(PREFIX, suite));

    for (const { method: m, fraction, said } of ROUNDS) {
        it(`method ${m}: kills every command at ${said} of its work, upgrade and revert: each re-run converges, the data row for row`, async () => {
            method = m;
            const commands = [...clean.get(m)!.keys()];
            const upgradeCommands = commands.filter((n) => n.startsWith("upgrade-") || n.startsWith("pg17-"));
            const revertCommands = commands.filter((n) => n.startsWith("pg15-"));
            made.length = 0;
            planKills(upgradeCommands, fraction);
            const upgradeKills = planned.size;
            const ups = await upUntilDone(upgrade());
            await expectServes(17);
            planKills(revertCommands, fraction);
            const revertKills = planned.size;
            const revertUps = await upUntilDone(revert());
            await expectServes(15);
            await withoutNewData();
            console.log(`      killed: ${made.join("; ")}`);
            console.log(`      pulumi up ran ${ups} time(s) for the upgrade, ${revertUps} for the revert`);
            // A step that waits for a server polls it, so its child processes vary with the machine's load: one
            // may end before its kill point. Most must have been killed, and every upgrade step was planned.
            const missed = [...planned.keys()];
            planned.clear();
            if (missed.length) console.log(`      finished before their kill point: ${missed.join(", ")}`);
            assert.ok(upgradeKills >= 6, `every step of the upgrade planned: ${upgradeCommands.join(", ")}`);
            assert.ok(made.length * 2 >= upgradeKills + revertKills, `most kills made: ${made.join("; ")}`);
        });
    }

    it("leaves no container of a killed step behind", async () => {
        const ours = (await run("docker", ["ps", "-a", "--format", "{{.Names}}", "--filter", `name=${PREFIX}`])).stdout
            .split("\n")
            .filter(Boolean)
            .sort();
        assert.deepEqual(ours, [`${PREFIX}pg15`]);
    });
});
