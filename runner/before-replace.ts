// before-replace: Synapse is stopped before Pulumi replaces the serving container (a minor update, new settings),
// and the serve step that follows the new container starts it again.
//
// Replacing the container under a running Synapse cuts its database connections mid-transaction. Seen with a
// real Synapse 1.160 on a minor update: after the new server came up, every message send failed with HTTP 500
// (`duplicate key value violates unique constraint "state_groups_persisting_pkey"`) until Synapse was restarted.
// The step only stops Synapse when the running container is about to be replaced (its image or its settings
// differ from what is declared); run at any other time it changes nothing, so Synapse is never left stopped.
import { inspectContainer } from "./docker";
import { stopSynapse } from "./synapse";

export interface BeforeReplaceInput {
    /** The serving container and what the stack now declares for it. */
    container: string;
    image: string;
    /** The declared server command (`postgres` and postgres:settings as -c options); undefined: not compared. */
    command?: string[];
    synapse: string[];
}

export interface BeforeReplaceResult {
    /** Why the container will be replaced, when it will be. */
    replacing?: string;
    stopped: string[];
}

export async function stopSynapseBeforeReplace(input: BeforeReplaceInput): Promise<BeforeReplaceResult> {
    const info = await inspectContainer(input.container);
    if (!info?.running) return { stopped: [] };
    const replacing = info.image !== input.image
        ? `its image changes from ${info.image} to ${input.image}`
        : input.command && JSON.stringify(info.cmd) !== JSON.stringify(input.command) ? "its settings change" : undefined;
    if (!replacing) return { stopped: [] };
    return { replacing, stopped: await stopSynapse(input.synapse) };
}
