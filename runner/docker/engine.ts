// Where the Docker engine is: on this machine (a unix socket) or on another one (ssh:// or tcp://, from
// DOCKER_HOST, which the program sets from docker:host, or from a docker context). Decides how the steps reach the
// database host's folders (host/choose.ts): a remote engine's folders are on its machine, not on this one.
import { ProcessError, run } from "./process";
import { StepError } from "../step-error";

/** The endpoint the docker CLI uses: DOCKER_HOST when set, else the current context's. */
export async function dockerEndpoint(): Promise<string> {
    const { stdout } = await run("docker", ["context", "inspect", "--format", "{{.Endpoints.docker.Host}}"]);
    return stdout.trim();
}

/** A local socket is this machine's engine (a socket forwarded from elsewhere: set SYNAPSE_PG_HOST_FOLDERS=engine). */
export function isLocalEndpoint(endpoint: string): boolean {
    return endpoint.startsWith("unix://") || endpoint.startsWith("npipe://");
}

/** Undefined when the engine answers; else why not, in ssh's own words where it gave them. */
async function whyUnreachable(): Promise<string | undefined> {
    try {
        await run("docker", ["version", "--format", "{{.Server.Version}}"]);
        return undefined;
    } catch (err) {
        const said = err instanceof ProcessError ? err.stderrTail : (err as Error).message;
        // The docker CLI wraps ssh's own words in a long sentence of its own; ssh's are the ones that help.
        return said.match(/stderr=(.*)$/s)?.[1]?.trim() || (said.trim().split("\n").pop() ?? "");
    }
}

/**
 * One round trip to an engine on another machine before a step does anything: unreachable (ssh refused, a wrong
 * key, no docker there), the step fails in one sentence before it stops Synapse or touches a container.
 */
export async function requireReachable(endpoint: string): Promise<void> {
    const why = await whyUnreachable();
    if (why !== undefined)
        throw new StepError(`The Docker engine at ${endpoint} cannot be reached, so nothing was run: ${why}`);
}

/**
 * After a failure against an engine on another machine: when the engine no longer answers, the step's one sentence
 * says the connection was lost (undefined while it answers). What the step began stays as a killed step leaves it.
 */
export async function engineLost(endpoint: string): Promise<string | undefined> {
    const why = await whyUnreachable();
    if (why === undefined) return undefined;
    return `The connection to the Docker engine at ${endpoint} was lost during the step (${why}); nothing was switched: once it answers again, pulumi up again finishes or redoes what the step began.`;
}
