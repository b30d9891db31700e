// Synapse's own containers (main process and workers), when the user names them (postgres:synapseContainers):
// stopped before anything reads the old cluster for the upgrade, started again after the switch, and started
// again on the untouched old cluster when a step before the switch fails.
import { inspectContainer, sleep } from "./docker";
import { run } from "./process";
import { StepError } from "./step-error";

export function parseContainerList(text: string | undefined): string[] {
    return (text ?? "").split(",").map((s) => s.trim()).filter(Boolean);
}

/** Stops the running ones; says which it stopped. Synapse shuts down on SIGTERM; 60 s before a kill. */
export async function stopSynapse(containers: string[]): Promise<string[]> {
    const stopped: string[] = [];
    for (const name of containers) {
        const info = await inspectContainer(name);
        if (!info) throw new StepError(`The Synapse container "${name}" (postgres:synapseContainers) does not exist; fix the name or remove it from the list.`);
        if (!info.running) continue;
        await run("docker", ["stop", "--time", "60", name]);
        stopped.push(name);
    }
    return stopped;
}

export async function startSynapse(containers: string[]): Promise<string[]> {
    const started: string[] = [];
    for (const name of containers) {
        const info = await inspectContainer(name);
        if (!info) throw new StepError(`The Synapse container "${name}" (postgres:synapseContainers) does not exist; fix the name or remove it from the list.`);
        if (info.running) continue;
        await run("docker", ["start", name]);
        started.push(name);
    }
    // Give a container that dies at once (e.g. cannot reach its database) the chance to show it.
    await sleep(started.length ? 1000 : 0);
    return started;
}
