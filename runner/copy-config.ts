// copy-config: carries the old cluster's postgresql.conf and postgresql.auto.conf (ALTER SYSTEM settings) into the
// new cluster and restarts it, so the tuning the user did survives the upgrade. The new cluster keeps its own
// pg_hba.conf (scram-sha-256 for host connections). A setting the new major rejects shows up here, while Synapse
// is still on the old cluster.
import { containerLogTail, query, requireContainer, startContainer, stopContainer, superuserOf, waitUntilAccepting } from "./docker";
import { run } from "./process";
import { StepError } from "./step-error";

export interface CopyConfigInput {
    from: string;
    to: string;
}

export interface CopyConfigResult {
    copied: string[];
    unchanged: string[];
}

const FILES = ["postgresql.conf", "postgresql.auto.conf"];

export async function copyConfig(input: CopyConfigInput): Promise<CopyConfigResult> {
    const from = await requireContainer(input.from, "old");
    const to = await requireContainer(input.to, "new");
    if (!from.running) throw new StepError(`The old container "${input.from}" is not running; copy-config reads its configuration from the live server.`);
    if (!to.running) throw new StepError(`The new container "${input.to}" is not running; run the restore step first.`);
    const fromDir = await configDir(input.from, superuserOf(from));
    const toDir = await configDir(input.to, superuserOf(to));

    const copied: string[] = [];
    const unchanged: string[] = [];
    for (const file of FILES) {
        const text = await readFileIn(input.from, `${fromDir}/${file}`);
        if (text === undefined) continue;
        if ((await readFileIn(input.to, `${toDir}/${file}`)) === text) {
            unchanged.push(file);
            continue;
        }
        await run("docker", ["exec", "-i", "-u", "postgres", input.to, "tee", `${toDir}/${file}`], { stdin: text });
        copied.push(file);
    }
    if (copied.length > 0) {
        await stopContainer(input.to);
        await startContainer(input.to);
        try {
            await waitUntilAccepting(input.to, superuserOf(to), 120);
        } catch {
            throw new StepError(
                `The new PostgreSQL in "${input.to}" does not start with the old ${copied.join(" and ")}; fix or remove the rejected settings (log: ${await containerLogTail(input.to, 4)}).`,
            );
        }
    }
    return { copied, unchanged };
}

async function configDir(container: string, user: string): Promise<string> {
    const [[file]] = await query(container, user, "SELECT current_setting('config_file')");
    return file.replace(/\/[^/]+$/, "");
}

async function readFileIn(container: string, file: string): Promise<string | undefined> {
    try {
        return (await run("docker", ["exec", container, "cat", file])).stdout;
    } catch {
        return undefined;
    }
}
