// Synapse's own containers (main process and workers), when the user names them (postgres:synapseContainers):
// stopped before anything reads the old cluster for the upgrade, started again after the switch, and started
// again on the untouched old cluster when a step before the switch fails.
import { inspectContainer } from "../docker/containers";
import { run } from "../docker/process";
import { StepError } from "../step-error";

export function parseContainerList(text: string | undefined): string[] {
    return (text ?? "")
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean);
}

/** Stops the running ones; says which it stopped. Synapse shuts down on SIGTERM; 60 s before a kill. */
export async function stopSynapse(containers: string[]): Promise<string[]> {
    const stopped: string[] = [];
    for (const name of containers) {
        const info = await inspectContainer(name);
        if (!info)
            throw new StepError(
                `The Synapse container "${name}" (postgres:synapseContainers) does not exist; fix the name or remove it from the list.`,
            );
        if (!info.running) continue;
        await run("docker", ["stop", "--time", "60", name]);
        stopped.push(name);
    }
    return stopped;
}

/**
 * The copy of the old data in the new cluster must hold everything Synapse wrote. A step that fails before the
 * switch starts Synapse again on the old cluster, which then writes what the copy taken before (`copiedAt`) lacks:
 * the switch to that copy would lose it. Refuses, naming the container and the time, and saying how to go on.
 */
export async function requireCopyAfterSynapse(containers: string[], copiedAt: string | undefined): Promise<void> {
    if (!copiedAt) return;
    for (const name of containers) {
        const info = await inspectContainer(name);
        if (info && Date.parse(info.startedAt) > Date.parse(copiedAt)) {
            throw new StepError(
                `Synapse ("${name}") was started again on the old cluster at ${info.startedAt}, after the new cluster's copy was taken (${copiedAt}), so the copy may lack what it wrote and the switch will not happen; run pulumi config set postgres:attempt <the next number> and pulumi up for a fresh copy.`,
            );
        }
    }
}

export async function startSynapse(containers: string[]): Promise<string[]> {
    const started: string[] = [];
    for (const name of containers) {
        const info = await inspectContainer(name);
        if (!info)
            throw new StepError(
                `The Synapse container "${name}" (postgres:synapseContainers) does not exist; fix the name or remove it from the list.`,
            );
        if (info.running) continue;
        await run("docker", ["start", name]);
        started.push(name);
    }
    return started;
}
