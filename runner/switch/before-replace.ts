// before-replace: runs before Pulumi replaces the serving container (a minor update, new settings, a new data
// location), and refuses a replacement that would serve an empty database.
//
// - Synapse is stopped first. Replacing the container under a running Synapse cuts its database connections
//   mid-transaction. Seen with a real Synapse 1.160 on a minor update: after the new server came up, every message
//   send failed with HTTP 500 (`duplicate key value violates unique constraint "state_groups_persisting_pkey"`)
//   until Synapse was restarted. The serve step that follows the new container starts it again.
// - A changed postgres:dataRoot moves the container onto another volume or folder. Onto an empty one, the image
//   would initialise a fresh cluster and Synapse would create a fresh schema in it, with the real data left
//   behind: refused before anything changes. A location that already holds a cluster (the user moved the data
//   there) is accepted.
//
// - The replacement's server is started first, for real, in a throw-away container (start-check.ts): a setting
//   or an image it cannot start with is refused while the current server still serves.
//
// Run at any other time the step changes nothing, so Synapse is never left stopped.
import { ContainerInfo, inspectContainer, mountsHoldingPgdata } from "../docker/containers";
import { run } from "../docker/process";
import { DataLocation, formatDataLocation } from "../target/layout";
import { StepError } from "../step-error";
import { requireServerStarts } from "../config/start-check";
import { stopSynapse } from "./synapse";
import { locationExists, readTargetState } from "../target/markers";
import { CLUSTER_LABEL, MANAGED_LABEL, ROLE_LABEL } from "../names";

export interface BeforeReplaceInput {
    /** The serving container and what the stack now declares for it. */
    container: string;
    image: string;
    /** The declared server command (`postgres` and postgres:settings as -c options); undefined: not compared. */
    command?: string[];
    /** The declared data location and the major (where the image keeps it); undefined: not compared. */
    data?: DataLocation;
    major?: number;
    /** The declared published port, network, alias, bootstrap user, database and password; undefined: not compared. */
    port?: string;
    network?: string;
    alias?: string;
    user?: string;
    database?: string;
    password?: string;
    synapse: string[];
}

export interface BeforeReplaceResult {
    /** Why the container will be replaced, when it will be. */
    replacing?: string;
    /** The replacement's server was started for real first (start-check.ts). */
    startChecked?: boolean;
    stopped: string[];
}

export async function stopSynapseBeforeReplace(input: BeforeReplaceInput): Promise<BeforeReplaceResult> {
    const info = await inspectContainer(input.container);
    if (!info) {
        if (input.major !== undefined && input.network !== undefined && input.alias !== undefined) {
            await requireNoOtherServingContainer(input.container, input.major, input.network, input.alias);
        }
        return { stopped: [] };
    }
    requireSameBootstrap(info, input);
    const moving =
        input.data && input.major !== undefined && !mountsHoldingPgdata(info).some((m) => isLocation(m, input.data!));
    if (moving) await requireDataAt(info, input.data!, input.major!, input.image);
    if (!info.running) return { stopped: [] };
    const replacing = moving
        ? `its data location changes to ${formatDataLocation(input.data!)}`
        : whyReplaced(info, input);
    if (!replacing) return { stopped: [] };
    // The replacement's server, started for real on this cluster's files while this one still serves (a moved
    // cluster's files are another cluster's: its own start says).
    const startChecked = !moving && input.command !== undefined;
    if (startChecked)
        await requireServerStarts({ from: info.name, image: input.image, command: input.command! }, "running cluster");
    return { replacing, startChecked, stopped: await stopSynapse(input.synapse) };
}

/** Why the declared container differs from the running one in an input that replaces it; undefined when it does not. */
function whyReplaced(info: ContainerInfo, input: BeforeReplaceInput): string | undefined {
    const differs = (declared: string | undefined, running: string | undefined) =>
        declared !== undefined && declared !== (running ?? "");
    if (info.image !== input.image) return `its image changes from ${info.image} to ${input.image}`;
    if (input.command && JSON.stringify(info.cmd) !== JSON.stringify(input.command)) return "its settings change";
    if (differs(input.port, info.publishedPort)) return "its published port changes";
    if (
        input.network !== undefined &&
        input.alias !== undefined &&
        !info.networks[input.network]?.aliases.includes(input.alias)
    )
        return "its network or host name changes";
    if (differs(input.password, info.env.POSTGRES_PASSWORD)) return "its password changes";
    return undefined;
}

/**
 * The image applies POSTGRES_USER and POSTGRES_DB only when it initialises an empty folder: on a cluster with data a
 * change would replace the container and leave the role and database as they are, and Synapse's login failing.
 */
function requireSameBootstrap(info: ContainerInfo, input: BeforeReplaceInput): void {
    for (const [key, declared, running] of [
        ["user", input.user, info.env.POSTGRES_USER],
        ["database", input.database, info.env.POSTGRES_DB],
    ] as const) {
        if (declared === undefined || running === undefined || declared === running) continue;
        throw new StepError(
            `postgres:${key} changes from ${running} to ${declared}, but the image applies it only to an empty data folder, so "${info.name}" would keep ${running}; set postgres:${key} back, or create the ${key === "user" ? "role" : "database"} ${declared} yourself (psql) and then change postgres:${key}.`,
        );
    }
}

/**
 * A first deploy has no container for this major; a cluster container of ours of this major under another name,
 * answering to the same alias on the same network, means the name changed (postgres:containerPrefix), and with it
 * the data location, onto an empty one. Another stack's (another network or alias) is not this one's.
 */
async function requireNoOtherServingContainer(
    container: string,
    major: number,
    network: string,
    alias: string,
): Promise<void> {
    const { stdout } = await run("docker", [
        "ps",
        "-a",
        "--filter",
        `label=${MANAGED_LABEL}=true`,
        "--filter",
        `label=${CLUSTER_LABEL}=${major}`,
        "--format",
        `{{.Names}}\t{{.Label "${ROLE_LABEL}"}}`,
    ]);
    for (const [name, role] of stdout
        .split("\n")
        .filter(Boolean)
        .map((l) => l.split("\t"))) {
        if (role || name === container) continue;
        if (!(await inspectContainer(name))?.networks[network]?.aliases.includes(alias)) continue;
        throw new StepError(
            `"${name}" already serves PostgreSQL ${major} as "${alias}" on "${network}"; a new name (postgres:containerPrefix) would start "${container}" beside it on other, empty data; set postgres:containerPrefix back.`,
        );
    }
}

function isLocation(mount: ContainerInfo["mounts"][number], data: DataLocation): boolean {
    return data.kind === "volume"
        ? mount.type === "volume" && mount.name === data.name
        : mount.type === "bind" && mount.source === data.path;
}

async function requireDataAt(info: ContainerInfo, data: DataLocation, major: number, image: string): Promise<void> {
    const empty = !(await locationExists(data)) || (await readTargetState(data, major, image)).isEmpty;
    if (!empty) return;
    const from =
        mountsHoldingPgdata(info)
            .map((m) => m.name ?? m.source)
            .join(", ") || "its current data";
    throw new StepError(
        `postgres:dataRoot would move "${info.name}" from ${from} to ${formatDataLocation(data)}, which is empty: the new container would serve an empty database and Synapse would start a fresh one there; to move the data, stop "${info.name}", copy its data there yourself (keep the original) and run pulumi up again, or set postgres:dataRoot back.`,
    );
}
