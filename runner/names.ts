// The names the Pulumi layer and the step runner share: Docker labels, the password's environment variable, the
// oldest major served. Free of imports, so both layers read them from here and never spell them out.

/** Set to "true" on every container and volume synapse-postgres creates. */
export const MANAGED_LABEL = "synapse-postgres.managed";
/** The major version a cluster's container or data holds. */
export const CLUSTER_LABEL = "synapse-postgres.cluster";
/** What a container of ours is for, beyond the declared clusters (which have none). */
export const ROLE_LABEL = "synapse-postgres.role";
/** The old cluster a standby follows. */
export const STANDBY_OF_LABEL = "synapse-postgres.standby-of";
/** The cluster a write fence holds, and the networks it took the cluster off. */
export const FENCE_OF_LABEL = "synapse-postgres.fence-of";
export const FENCE_NETWORKS_LABEL = "synapse-postgres.fence-networks";
/** The container and dump a dump-tool container serves. */
export const TOOL_OF_LABEL = "synapse-postgres.tool-of";
/** The volume a set-aside copy was taken from. */
export const SET_ASIDE_FROM_LABEL = "synapse-postgres.set-aside-from";
/** The image whose binaries a binaries volume holds. */
export const BINARIES_OF_LABEL = "synapse-postgres.binaries-of";
/** On the container an unpack of an old image exports from (its lock): <host>:<pid> of the step unpacking. */
export const UNPACKED_BY_LABEL = "synapse-postgres.unpacked-by";

/** The short-lived containers and volumes the steps make, by their ROLE_LABEL. */
export type Role = "staging" | "standby" | "fence" | "start-check" | "rehearsal" | "count";

/** `docker run`/`create` arguments that mark a container (or volume) as ours, in a role. */
export function ourLabels(role: Role): string[] {
    return ["--label", `${MANAGED_LABEL}=true`, "--label", `${ROLE_LABEL}=${role}`];
}

/** The database password reaches every step through this variable, never on a command line. */
export const PASSWORD_ENV = "SYNAPSE_PG_PASSWORD";

/** "engine": every step reaches the database host's folders through Docker, also when the engine runs here. */
export const HOST_FOLDERS_ENV = "SYNAPSE_PG_HOST_FOLDERS";

/** The oldest PostgreSQL major current Synapse runs on: neither the source's nor the target's may be older. */
export const MIN_MAJOR = 14;
