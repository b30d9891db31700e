// Where a major's data lives inside its container, and where it lives on the host. Shared by the Pulumi layer
// (which declares the serving container) and the step runner (which starts the staging container), so that both
// mount the data in exactly the same place.

export interface DataLayout {
    /** Where the volume or host folder is mounted. */
    mountTarget: string;
    /** PGDATA inside the container. */
    pgdata: string;
}

/**
 * Up to 17 the official image keeps PGDATA at the volume root. From 18 it declares `VOLUME /var/lib/postgresql`
 * and keeps PGDATA at /var/lib/postgresql/18/docker: mounting a volume at the old path on 18+ leaves the real data
 * in an anonymous volume that the next container replacement deletes.
 */
export function dataLayout(major: number): DataLayout {
    if (major >= 18) {
        return { mountTarget: "/var/lib/postgresql", pgdata: `/var/lib/postgresql/${major}/docker` };
    }
    return { mountTarget: "/var/lib/postgresql/data", pgdata: "/var/lib/postgresql/data" };
}

/** A cluster's data: a Docker named volume, or a host folder bind-mounted (the guide's `./pgsql15`). */
export type DataLocation = { kind: "volume"; name: string } | { kind: "folder"; path: string };

/** `--data` on the command line: an absolute path is a host folder, anything else a volume name. */
export function parseDataLocation(text: string): DataLocation {
    return text.startsWith("/") ? { kind: "folder", path: text } : { kind: "volume", name: text };
}

export function formatDataLocation(data: DataLocation): string {
    return data.kind === "folder" ? data.path : data.name;
}

/** The `-v` argument of `docker run` for this location at this major's mount point. */
export function mountArgument(data: DataLocation, major: number): string {
    return `${formatDataLocation(data)}:${dataLayout(major).mountTarget}`;
}

/**
 * Names of the cluster of one major, in the guide's style: with the default prefix `synapse-pg`, container
 * `synapse-pg15`, volume `synapse-pgsql15`, host folder `pgsql15`.
 */
export function clusterNames(prefix: string, major: number) {
    return {
        container: `${prefix}${major}`,
        staging: `${prefix}${major}-staging`,
        volume: `${prefix}sql${major}`,
        folder: `pgsql${major}`,
    };
}

/** The serving container's health check interval: the engine waits for the first check after a start. */
export const HEALTHCHECK_INTERVAL_SECONDS = 2;
