// What both benchmarks share: the clusters they start, the step runner run through its CLI exactly as a command
// resource runs it, timing, and cleanup. Names start with spbench- so cleanup never touches anything else.
import { spawn } from "node:child_process";
import { run } from "../runner/docker/process";
import { CLUSTER_LABEL, MANAGED_LABEL, PASSWORD_ENV } from "../runner/names";
import * as path from "node:path";

export const IMAGE = "synapse-pg-test/postgres";
export const PREFIX = "spbench-";
export const PASSWORD = "bench-password";
export const REPO = path.resolve(__dirname, "..");
/** The network Synapse would use, with the alias the serving cluster answers to. */
export const NETWORK = `${PREFIX}net`;

export function flag(name: string, fallback?: string): string | undefined {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : fallback;
}

export function parseSize(text: string): number {
    const m = /^(\d+(?:\.\d+)?)(MB|GB)$/i.exec(text);
    if (!m) throw new Error(`--size must look like 200MB or 1GB, not "${text}"`);
    return Number(m[1]) * (m[2].toUpperCase() === "GB" ? 1000 : 1);
}

export async function seconds<T>(work: () => Promise<T>): Promise<[number, T]> {
    const start = process.hrtime.bigint();
    const result = await work();
    return [Number(process.hrtime.bigint() - start) / 1e9, result];
}

export async function cleanup(): Promise<void> {
    const names = (await run("docker", ["ps", "-a", "--format", "{{.Names}}"])).stdout
        .split("\n")
        .filter((n) => n.startsWith(PREFIX));
    if (names.length) await run("docker", ["rm", "-f", ...names]);
    const vols = (await run("docker", ["volume", "ls", "--format", "{{.Name}}"])).stdout
        .split("\n")
        .filter((n) => n.startsWith(PREFIX));
    if (vols.length) await run("docker", ["volume", "rm", "-f", ...vols]);
    await run("docker", ["network", "rm", NETWORK]).catch(() => undefined);
}

/**
 * The switch's last part, as pulumi up does it after cutover: the new serving container, created as
 * components/cluster.ts declares it (alias on Synapse's network, no wait for a health check), then the serve step.
 */
export async function serveNew(name: string, volume: string, major: number, synapse?: string): Promise<number> {
    await run(
        "docker",
        [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            NETWORK,
            "--network-alias",
            "db",
            "--shm-size",
            "256m",
            "-e",
            "POSTGRES_USER=synapse",
            "-e",
            "POSTGRES_PASSWORD",
            "-e",
            "PGDATA=/var/lib/postgresql/data",
            "--label",
            `${MANAGED_LABEL}=true`,
            "--label",
            `${CLUSTER_LABEL}=${major}`,
            "--restart",
            "unless-stopped",
            "--stop-signal",
            "SIGINT",
            "-v",
            `${volume}:/var/lib/postgresql/data`,
            `${IMAGE}:${major}`,
        ],
        { env: { POSTGRES_PASSWORD: PASSWORD } },
    );
    return step([
        "serve",
        "--container",
        name,
        "--network",
        NETWORK,
        "--alias",
        "db",
        "--database",
        "synapse",
        ...(synapse ? ["--synapse", synapse] : []),
    ]);
}

/** A cluster as the program declares one; `serving`: on Synapse's network with the alias, like a serving cluster. */
export async function startCluster(name: string, major: number, volume: string, serving = false): Promise<void> {
    const network = serving
        ? ["--network", NETWORK, "--network-alias", "db", "--label", `${MANAGED_LABEL}=true`, "--stop-signal", "SIGINT"]
        : [];
    await run(
        "docker",
        [
            "run",
            "-d",
            "--name",
            name,
            ...network,
            "--shm-size",
            "256m",
            "-e",
            "POSTGRES_USER=synapse",
            "-e",
            "POSTGRES_PASSWORD",
            "-e",
            "POSTGRES_INITDB_ARGS=--encoding=UTF8 --lc-collate=C --lc-ctype=C",
            "-v",
            `${volume}:/var/lib/postgresql/data`,
            `${IMAGE}:${major}`,
        ],
        { env: { POSTGRES_PASSWORD: PASSWORD } },
    );
    await waitReady(name);
}

/** Polls every 0.1 s, as serve does: the guide's waits are timed too, and must not be padded. */
export async function waitReady(name: string): Promise<void> {
    for (let i = 0; i < 1200; i++) {
        const ok = await run("docker", [
            "exec",
            name,
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "synapse",
            "-d",
            "postgres",
            "-Atc",
            "SELECT 1",
        ]).then(
            () => true,
            () => false,
        );
        if (ok) return;
        await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${name} did not start`);
}

/** Each step's stdout, by step name: what it says it did (method pg_upgrade: linked on a standby, or copied). */
export const said: Record<string, string> = {};

/** Runs one step through the CLI, exactly as a command resource does, and returns its peak RSS in MB. */
export function step(args: string[]): Promise<number> {
    return new Promise((resolve, reject) => {
        const child = spawn(path.join(REPO, "bin/synapse-pg"), args, {
            cwd: REPO,
            env: {
                ...process.env,
                [PASSWORD_ENV]: PASSWORD,
                SYNAPSE_PG_REPORT_RSS: "1",
                SYNAPSE_PG_PROGRESS_MS: "10000",
            },
        });
        let err = "";
        child.stdout.on("data", (d) => {
            said[args[0]] = (said[args[0]] ?? "") + d;
            process.stderr.write(`    ${d}`);
        });
        child.stderr.on("data", (d) => {
            err += d;
            if (!String(d).startsWith("synapse-pg peak-rss-kb")) process.stderr.write(`    ${d}`);
        });
        child.on("close", (code) => {
            const rss = Number(/peak-rss-kb (\d+)/.exec(err)?.[1] ?? 0) / 1024;
            if (code === 0) resolve(rss);
            else reject(new Error(`synapse-pg ${args[0]} failed: ${err.trim()}`));
        });
    });
}

/** Runs the steps in order; returns each one's seconds and records its peak RSS under `<prefix><name>`. */
export async function runSteps(
    steps: [string, string[]][],
    rss: Record<string, number>,
    prefix: string,
): Promise<Record<string, number>> {
    const timings: Record<string, number> = {};
    for (const [name, args] of steps) {
        const [s, r] = await seconds(() => step(args));
        timings[name] = s;
        rss[`${prefix}${name}`] = r;
    }
    return timings;
}
