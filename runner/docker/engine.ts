// Where the Docker engine is. The steps read and write the database host's folders (postgres:backupDir, a
// postgres:dataRoot folder, pg_upgrade's flag, the rehearsal's work folder) with this machine's file system and
// bind-mount them into containers, so the engine must run here: an engine on another machine (docker:host,
// DOCKER_HOST or a docker context naming ssh:// or tcp://) would get our containers while the folders are written
// on the wrong machine. Until the steps do every host path through the engine, that is refused before anything runs.
import { run } from "./process";
import { StepError } from "../step-error";

/** The endpoint the docker CLI uses: DOCKER_HOST when set, else the current context's. */
async function dockerEndpoint(): Promise<string> {
    const { stdout } = await run("docker", ["context", "inspect", "--format", "{{.Endpoints.docker.Host}}"]);
    return stdout.trim();
}

/** A local socket is this machine's engine; anything else is refused with the way out. */
function remoteEngineRefusal(endpoint: string): string | undefined {
    if (endpoint.startsWith("unix://")) return undefined;
    return `Docker is reached at ${endpoint}, not through a socket on this machine, but the steps read and write the database host's folders (postgres:backupDir, postgres:dataRoot) on the machine they run on, so nothing was run: run pulumi up on the database host itself, with DOCKER_HOST and docker:host unset (a remote Docker engine is not supported yet).`;
}

export async function requireLocalEngine(): Promise<void> {
    const refusal = remoteEngineRefusal(await dockerEndpoint());
    if (refusal) throw new StepError(refusal);
}
