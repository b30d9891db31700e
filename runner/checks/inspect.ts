// inspect: what the program needs to know about a PostgreSQL container it did not create (postgres:adopt), read
// from the container itself: image and digest, major (PG_VERSION in its data), bootstrap user and database, where
// its data lives (host folder or volume), and the networks and host names Synapse reaches it by.
import { inspectContainer, pgdataOf, pinnedReference, superuserOf } from "../docker/containers";
import { query } from "../docker/psql";
import { run } from "../docker/process";
import { DataLocation } from "../target/layout";
import { StepError } from "../step-error";

export interface AdoptedFacts {
    container: string;
    image: string;
    /** The image by digest when it has one, so a revert runs exactly the binaries that wrote the data. */
    imageDigest?: string;
    major: number;
    version: string;
    user: string;
    database: string;
    data: DataLocation;
    /** The first user-defined network and the name Synapse uses on it (the compose service name). */
    network: string;
    hostAlias: string;
    running: boolean;
}

const DATA_PATHS = ["/var/lib/postgresql/data", "/var/lib/postgresql"];

export async function inspectAdopted(container: string): Promise<AdoptedFacts> {
    const info = await inspectContainer(container);
    if (!info)
        throw new StepError(
            `The container "${container}" named in postgres:adopt does not exist; give the name \`docker ps\` shows for your database.`,
        );
    const mount = DATA_PATHS.map((p) => info.mounts.find((m) => m.destination === p)).find(Boolean);
    if (!mount) {
        throw new StepError(
            `"${container}" keeps no data in a volume or host folder (nothing mounted at /var/lib/postgresql/data or /var/lib/postgresql), so its data would be lost with the container; mount it first.`,
        );
    }
    const data: DataLocation =
        mount.type === "bind" ? { kind: "folder", path: mount.source } : { kind: "volume", name: mount.name! };
    // PG_VERSION in the data directory is the truth about the major; the image tag may lie (postgres:latest).
    const pgdata = pgdataOf(info);
    if (!(pgdata + "/").startsWith(mount.destination.replace(/\/?$/, "/"))) {
        // The 18+ image keeps PGDATA at /var/lib/postgresql/18/docker; a volume at the old path holds nothing.
        throw new StepError(
            `"${container}" keeps its data at PGDATA=${pgdata}, outside what is mounted (${mount.destination}): the real data is in an anonymous volume that removing the container deletes. Mount the volume or folder at /var/lib/postgresql (the 18+ layout) before adopting it.`,
        );
    }
    const pgVersion = await readPgVersion(container, info.running, info.image, mount.destination, pgdata);
    const networks = Object.entries(info.networks).filter(([n]) => !["bridge", "host", "none"].includes(n));
    if (networks.length === 0) {
        throw new StepError(
            `"${container}" is on no user-defined Docker network, so Synapse cannot reach a new server by name; put both on one network (docker compose does) first.`,
        );
    }
    const [network, net] = networks[0];
    const service = info.labels["com.docker.compose.service"];
    const hostAlias = service ?? net.aliases.find((a) => a !== container) ?? container;
    const pinned = await pinnedReference(info.imageId);
    let version = String(pgVersion);
    if (info.running) version = (await query(container, superuserOf(info), "SHOW server_version"))[0][0];
    return {
        container: info.name,
        image: info.image,
        imageDigest: pinned.startsWith("sha256:") ? undefined : pinned,
        major: pgVersion,
        version,
        user: superuserOf(info),
        database: info.env.POSTGRES_DB || superuserOf(info),
        data,
        network,
        hostAlias,
        running: info.running,
    };
}

async function readPgVersion(
    container: string,
    running: boolean,
    image: string,
    mountTarget: string,
    pgdata: string,
): Promise<number> {
    const file = `${pgdata}/PG_VERSION`;
    const text = running
        ? (await run("docker", ["exec", container, "cat", file])).stdout
        : // A stopped container: read through a throw-away container with the same volumes.
          (
              await run("docker", [
                  "run",
                  "--rm",
                  "--network",
                  "none",
                  "--volumes-from",
                  container,
                  "--entrypoint",
                  "cat",
                  image,
                  file,
              ])
          ).stdout;
    const major = Number(text.trim());
    if (!Number.isInteger(major) || major < 9)
        throw new StepError(`"${container}" has no readable PG_VERSION at ${file} (mounted from ${mountTarget}).`);
    return major;
}
