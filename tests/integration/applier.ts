// Applies what the program declares (recorded under mocks) to the real Docker engine the way `pulumi up` would,
// because no Pulumi engine or provider can run on this machine. It keeps a small state of what it created and:
// - creates declared resources in dependency order, and stops at the first failure (nothing after it runs);
// - a volume whose name or labels changed is replaced, the new one created first (one with retainOnDelete is
//   only forgotten);
// - for a container whose replacement-forcing inputs changed, deletes the old one first (deleteBeforeReplace)
//   and creates the new one; a command whose triggers changed is replaced (its create runs again, and the old
//   one's delete before it with deleteBeforeReplace, after it without); a command whose other inputs changed
//   runs its update (create again if it has none) with its last output in PULUMI_COMMAND_STDOUT; an input in
//   ignoreChanges keeps its old value, through a replacement too;
// - after that, deletes what the config no longer declares, dependents first: a container is stopped with its
//   stop signal and grace period and removed (anonymous volumes kept, as removeVolumes=false), a volume with
//   retainOnDelete is only forgotten, a command without a delete command runs nothing.
//
// Container inputs that force replacement in the Docker provider (5.x, bridged from Terraform's docker provider):
// name, image, envs, volumes, mounts, ports, networksAdvanced (aliases too), labels, healthcheck, stopSignal,
// command, entrypoint, shmSize, and most others. Updated in place: restart, resource limits, destroyGraceSeconds, wait,
// waitTimeout, removeVolumes, mustRun, start. Without `pulumi refresh` nothing is read back: a container stopped by
// a step stays stopped until something declares a change. A container declared with `start: false` is created, not
// started. An optional and computed input that becomes absent (command, shmSize, envs, labels, ...) keeps the
// container's value: no diff, as in the provider.
import { spawn } from "node:child_process";
import { run } from "../../runner/docker/process";
import { Declared, DeclaredResource, unwrapSecrets } from "../fixtures/pulumi-graph";
import * as path from "node:path";

/**
 * Optional and computed in the provider: an input that becomes absent keeps the value the container has (no diff,
 * no replacement), so taking it out of the program changes nothing on the server.
 */
const KEPT_WHEN_ABSENT = [
    "command",
    "entrypoints",
    "envs",
    "labels",
    "healthcheck",
    "stopSignal",
    "shmSize",
    "logDriver",
    "hostname",
    "init",
];
const IN_PLACE_CONTAINER_INPUTS = new Set([
    "restart",
    "destroyGraceSeconds",
    "wait",
    "waitTimeout",
    "removeVolumes",
    "mustRun",
    "start",
]);
export const REPO = path.resolve(__dirname, "../..");

interface Applied {
    type: string;
    inputs: Record<string, any>;
    retainOnDelete: boolean;
    dependencies: string[];
    urn: string;
    /** A command's stdout and stderr from its last create or update (its outputs in the state). */
    output?: { stdout: string; stderr: string };
}

/** What the provider gives a command's update and delete of its last run. */
function previousOutput(applied: Applied): Record<string, string> {
    return {
        PULUMI_COMMAND_STDOUT: (applied.output?.stdout ?? "").replace(/\n$/, ""),
        PULUMI_COMMAND_STDERR: (applied.output?.stderr ?? "").replace(/\n$/, ""),
    };
}

export interface CommandRun {
    name: string;
    command: string;
    stdout: string;
    stderr: string;
    /** An update (an input other than triggers changed), not a create. */
    update?: boolean;
}

export class Applier {
    /** What exists, by resource name: the applier's "state file". */
    readonly state = new Map<string, Applied>();
    /** Every command run, in order, for the test's assertions. */
    readonly commandRuns: CommandRun[] = [];
    /** Every delete command run (a command taken out of the stack, or replaced), in order. */
    readonly deleteRuns: CommandRun[] = [];
    /** The mocks give every resource the id "<name>-id"; the engine would pass the real one (a new container's
     * new id re-triggers the serve step). */
    private readonly realIds = new Map<string, string>();

    /**
     * `afterCommand` is called after each successful command (the tests run every step a second time there);
     * `runCommand` runs a command's create or update in place of the shell (a test that kills a step half-way).
     */
    constructor(
        private readonly afterCommand?: (
            r: DeclaredResource,
            env: Record<string, string>,
            line: string,
        ) => Promise<void>,
        private readonly runCommand: (
            r: DeclaredResource,
            line: string,
            env: Record<string, string>,
        ) => Promise<{ stdout: string; stderr: string }> = (_r, line, env) => runShell(line, env),
    ) {}

    async up(declared: Declared): Promise<void> {
        const plain = declared.resources.map((r) => ({ ...r, inputs: unwrapSecrets(r.inputs) }));
        for (const declaredResource of topologicalOrder(plain)) {
            if (!declaredResource.custom) continue;
            const r = { ...declaredResource, inputs: this.withRealIds(declaredResource.inputs) };
            const prior = this.state.get(r.name);
            if (r.type === "docker:index/volume:Volume") await this.volume(r, prior);
            else if (r.type === "docker:index/container:Container") await this.container(r, prior);
            else if (r.type === "command:local:Command") await this.command(r, prior);
            else throw new Error(`the applier does not know ${r.type}`);
        }
        const declaredNames = new Set(plain.map((r) => r.name));
        const gone = [...this.state.entries()].filter(([name]) => !declaredNames.has(name));
        // Dependents first: reverse of the order they were created in (the map keeps insertion order).
        for (const [name, applied] of gone.reverse()) {
            await this.delete(name, applied);
            this.state.delete(name);
        }
    }

    private withRealIds(inputs: Record<string, any>): Record<string, any> {
        return JSON.parse(JSON.stringify(inputs), (_k, v) =>
            typeof v === "string" && this.realIds.has(v) ? this.realIds.get(v) : v,
        );
    }

    private remember(r: DeclaredResource, output?: Applied["output"]): void {
        this.state.delete(r.name);
        this.state.set(r.name, {
            type: r.type,
            inputs: r.inputs,
            retainOnDelete: r.retainOnDelete,
            dependencies: r.dependencies,
            urn: r.urn,
            output,
        });
    }

    private async volume(r: DeclaredResource, prior?: Applied): Promise<void> {
        if (prior && same(prior.inputs, r.inputs)) return this.remember(r);
        // A changed name or labels replace the volume, the new one created first; with retainOnDelete the old one
        // is only forgotten (its data stays in Docker), as the provider does.
        const args = ["volume", "create"];
        for (const l of r.inputs.labels ?? []) args.push("--label", `${l.label}=${l.value}`);
        await run("docker", [...args, r.inputs.name]);
        if (prior && !prior.retainOnDelete && prior.inputs.name !== r.inputs.name)
            await run("docker", ["volume", "rm", "--force", prior.inputs.name]);
        this.remember(r);
    }

    private async container(r: DeclaredResource, prior?: Applied): Promise<void> {
        if (prior) {
            // ignoreChanges: the engine diffs (and stores) the old value of an ignored input in place of the new one.
            for (const k of r.ignoreChanges)
                if (k in prior.inputs) r = { ...r, inputs: { ...r.inputs, [k]: prior.inputs[k] } };
            for (const k of KEPT_WHEN_ABSENT)
                if (r.inputs[k] === undefined && prior.inputs[k] !== undefined)
                    r = { ...r, inputs: { ...r.inputs, [k]: prior.inputs[k] } };
            const changed = Object.keys({ ...prior.inputs, ...r.inputs }).filter(
                (k) => !same(prior.inputs[k], r.inputs[k]),
            );
            if (changed.every((k) => IN_PLACE_CONTAINER_INPUTS.has(k))) return this.remember(r);
            await this.delete(r.name, prior); // deleteBeforeReplace
        }
        const i = r.inputs;
        const args = i.start === false ? ["create", "--name", i.name] : ["run", "-d", "--name", i.name];
        // Values by name only, from this process's environment, as the provider passes them through the API:
        // a value in argv would be visible to every user of the machine (and to the tests' ps check).
        const env: Record<string, string> = {};
        for (const e of i.envs ?? []) {
            const at = e.indexOf("=");
            env[e.slice(0, at)] = e.slice(at + 1);
            args.push("-e", e.slice(0, at));
        }
        for (const v of i.volumes ?? []) args.push("-v", `${v.volumeName ?? v.hostPath}:${v.containerPath}`);
        for (const [n, net] of (i.networksAdvanced ?? []).entries()) {
            if (n > 0) throw new Error("the applier attaches one network per container");
            args.push("--network", net.name);
            for (const a of net.aliases ?? []) args.push("--network-alias", a);
        }
        for (const p of i.ports ?? []) args.push("-p", `${p.ip}:${p.external}:${p.internal}`);
        for (const l of i.labels ?? []) args.push("--label", `${l.label}=${l.value}`);
        if (i.healthcheck) {
            const [kind, ...cmd] = i.healthcheck.tests;
            if (kind !== "CMD") throw new Error(`healthcheck kind ${kind}`);
            args.push(
                "--health-cmd",
                cmd.join(" "),
                "--health-interval",
                i.healthcheck.interval,
                "--health-timeout",
                i.healthcheck.timeout,
                "--health-retries",
                String(i.healthcheck.retries),
                "--health-start-period",
                i.healthcheck.startPeriod,
            );
        }
        if (i.restart) args.push("--restart", i.restart);
        if (i.stopSignal) args.push("--stop-signal", i.stopSignal);
        if (i.shmSize !== undefined) args.push("--shm-size", `${i.shmSize}m`);
        const { stdout: id } = await run("docker", [...args, i.image, ...(i.command ?? [])], { env });
        this.realIds.set(`${r.name}-id`, id.trim());
        if (i.wait) await waitHealthy(i.name, i.waitTimeout ?? 60);
        this.remember(r);
    }

    private async command(r: DeclaredResource, prior?: Applied): Promise<void> {
        // A replacement (triggers changed) runs the old resource's delete: first with deleteBeforeReplace, else
        // after the new create, as the engine does.
        let replaced: Applied | undefined;
        if (prior) {
            // ignoreChanges: the engine puts an ignored input's old value in the goal state (gone if it had none),
            // for an update and for a replacement alike.
            for (const k of r.ignoreChanges) {
                const { [k]: _declared, ...rest } = r.inputs;
                r = { ...r, inputs: k in prior.inputs ? { ...rest, [k]: prior.inputs[k] } : rest };
            }
            const triggersChanged = !same(prior.inputs.triggers, r.inputs.triggers);
            const changed = Object.keys({ ...prior.inputs, ...r.inputs }).filter(
                (k) => !same(prior.inputs[k], r.inputs[k]),
            );
            if (!triggersChanged && changed.length === 0) return this.remember(r, prior.output);
            if (triggersChanged) replaced = prior;
        }
        if (replaced && r.deleteBeforeReplace) await this.delete(r.name, replaced);
        // Any other change is an update: `update` runs when there is one (else create again), with the stored
        // output in PULUMI_COMMAND_STDOUT and PULUMI_COMMAND_STDERR, as the provider does.
        const updating = prior !== undefined && replaced === undefined;
        const line = updating && r.inputs.update ? r.inputs.update : r.inputs.create;
        const env = { ...(r.inputs.environment ?? {}), ...(updating ? previousOutput(prior!) : {}) };
        const { stdout, stderr } = await this.runCommand(r, line, env);
        this.commandRuns.push({ name: r.name, command: line, stdout, stderr, update: updating });
        this.remember(r, { stdout, stderr });
        if (replaced && !r.deleteBeforeReplace) await this.delete(r.name, replaced);
        if (this.afterCommand) await this.afterCommand(r, env, line);
    }

    private async delete(name: string, applied: Applied): Promise<void> {
        if (applied.type === "docker:index/container:Container") {
            const i = applied.inputs;
            await run("docker", [
                "stop",
                "--signal",
                i.stopSignal ?? "SIGTERM",
                "--time",
                String(i.destroyGraceSeconds ?? 0),
                i.name,
            ]).catch(() => undefined);
            await run("docker", ["rm", "--force", ...(i.removeVolumes === false ? [] : ["--volumes"]), i.name]);
        } else if (applied.type === "docker:index/volume:Volume") {
            if (!applied.retainOnDelete) await run("docker", ["volume", "rm", "--force", applied.inputs.name]);
        } else if (applied.type === "command:local:Command") {
            if (applied.inputs.delete) {
                const { stdout, stderr } = await runShell(applied.inputs.delete, {
                    ...(applied.inputs.environment ?? {}),
                    ...previousOutput(applied),
                });
                this.deleteRuns.push({ name, command: applied.inputs.delete, stdout, stderr });
            }
        }
    }
}

function same(a: unknown, b: unknown): boolean {
    return JSON.stringify(a) === JSON.stringify(b);
}

/** Dependencies before dependents; among independent resources, the order the program declared them. */
function topologicalOrder(resources: DeclaredResource[]): DeclaredResource[] {
    const byUrn = new Map(resources.map((r) => [r.urn, r]));
    const done = new Set<string>();
    const out: DeclaredResource[] = [];
    const visit = (r: DeclaredResource, path: string[]) => {
        if (done.has(r.urn)) return;
        if (path.includes(r.urn)) throw new Error(`dependency cycle through ${r.name}`);
        for (const d of r.dependencies) {
            const dep = byUrn.get(d);
            if (dep) visit(dep, [...path, r.urn]);
        }
        // A parent (component) comes before its children, as the engine registers it first.
        done.add(r.urn);
        out.push(r);
    };
    for (const r of resources) visit(r, []);
    return out;
}

/** Runs a command resource's command the way @pulumi/command's local.Command does: /bin/sh -c, in the project dir. */
export function runShell(command: string, env: Record<string, string>): Promise<{ stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
        const child = spawn("/bin/sh", ["-c", command], { cwd: REPO, env: { ...process.env, ...env } });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (d) => (stdout += d));
        child.stderr.on("data", (d) => (stderr += d));
        child.on("error", reject);
        child.on("close", (code) => {
            if (code === 0) resolve({ stdout, stderr });
            else
                reject(
                    Object.assign(new Error(`command failed (${code}): ${command}\n${stderr.trim()}`), {
                        stdout,
                        stderr,
                        code,
                    }),
                );
        });
    });
}

async function waitHealthy(container: string, timeoutSeconds: number): Promise<void> {
    const deadline = Date.now() + timeoutSeconds * 1000;
    while (Date.now() < deadline) {
        const { stdout } = await run("docker", ["inspect", "-f", "{{.State.Health.Status}}", container]);
        if (stdout.trim() === "healthy") return;
        await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`container ${container} was not healthy within ${timeoutSeconds} s`);
}
