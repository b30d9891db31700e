// Containers: inspect, start, stop, remove, run a short-lived helper (psql is in psql.ts, files in files.ts). Every
// call goes through process.ts; a password is only ever passed by name (`-e PGPASSWORD`), the value coming from our environment.
import { run, RunOptions } from "./process";
import { DataLocation, formatDataLocation } from "../target/layout";
import { StepError } from "../step-error";
import { ROLE_LABEL } from "../names";
import { waitUntilAccepting } from "./psql";

export interface ContainerInfo {
    name: string;
    id: string;
    image: string;
    imageId: string;
    running: boolean;
    /** When it last started (RFC 3339, Docker's clock). */
    startedAt: string;
    /** The command its entrypoint was given (the official image: `postgres` and its -c options). */
    cmd: string[];
    env: Record<string, string>;
    labels: Record<string, string>;
    /** Docker's restart policy: no, always, unless-stopped or on-failure. */
    restartPolicy: string;
    mounts: { type: string; name?: string; source: string; destination: string }[];
    networks: Record<string, { aliases: string[]; ip: string; staticIp?: string }>;
    /** Docker's network mode: a network's name, "host", "none" or "container:<id>". */
    networkMode: string;
    /** The host port 5432 is published on, if it is. */
    publishedPort?: string;
}

/** The part of `docker container inspect` we read. */
interface Inspected {
    Name: string;
    Id: string;
    Image: string;
    Config: { Image: string; Env?: string[]; Cmd?: string[]; Labels?: Record<string, string> };
    State: { Running?: boolean; StartedAt?: string };
    HostConfig?: {
        RestartPolicy?: { Name?: string };
        NetworkMode?: string;
        PortBindings?: Record<string, { HostPort?: string }[] | null>;
    };
    NetworkSettings?: {
        Networks?: Record<
            string,
            { Aliases?: string[] | null; IPAddress?: string; IPAMConfig?: { IPv4Address?: string } | null }
        >;
    };
    Mounts?: { Type: string; Name?: string; Source: string; Destination: string }[];
}

/**
 * The aliases a container was given. Docker 20.10 adds the container's 12-character short id to them on every user
 * network; it is not one of ours (a fence does not give it back, adoption does not take it for the host name). Only
 * that exact string is left out: an alias such as "db" is also a prefix of every id that begins with those hex digits.
 */
export function userAliases(id: string, aliases: string[]): string[] {
    return aliases.filter((a) => a !== id.slice(0, 12));
}

export async function inspectContainer(name: string): Promise<ContainerInfo | undefined> {
    let out: string;
    try {
        ({ stdout: out } = await run("docker", ["container", "inspect", name]));
    } catch (err) {
        if (String((err as Error).message).includes("No such container")) return undefined;
        throw err;
    }
    const [raw] = JSON.parse(out) as Inspected[];
    const env: Record<string, string> = {};
    for (const kv of raw.Config.Env ?? []) {
        const i = kv.indexOf("=");
        env[kv.slice(0, i)] = kv.slice(i + 1);
    }
    const networks: ContainerInfo["networks"] = {};
    for (const [net, n] of Object.entries(raw.NetworkSettings?.Networks ?? {})) {
        networks[net] = {
            aliases: userAliases(raw.Id, n.Aliases ?? []),
            ip: n.IPAddress ?? "",
            staticIp: n.IPAMConfig?.IPv4Address || undefined,
        };
    }
    return {
        name: String(raw.Name).replace(/^\//, ""),
        id: raw.Id,
        image: raw.Config.Image,
        imageId: raw.Image,
        running: raw.State.Running === true,
        startedAt: raw.State.StartedAt ?? "",
        cmd: raw.Config.Cmd ?? [],
        env,
        labels: raw.Config.Labels ?? {},
        restartPolicy: raw.HostConfig?.RestartPolicy?.Name || "no",
        mounts: (raw.Mounts ?? []).map((m) => ({
            type: m.Type,
            name: m.Name,
            source: m.Source,
            destination: m.Destination,
        })),
        networks,
        networkMode: raw.HostConfig?.NetworkMode ?? "default",
        publishedPort: raw.HostConfig?.PortBindings?.["5432/tcp"]?.[0]?.HostPort || undefined,
    };
}

/** PGDATA of a container made from the official image (its default up to 17 when the env does not say). */
export function pgdataOf(info: ContainerInfo): string {
    return info.env.PGDATA || "/var/lib/postgresql/data";
}

/** The container's volumes and folders that hold its PGDATA (the mount at it, or at a folder above it). */
export function mountsHoldingPgdata(info: ContainerInfo): ContainerInfo["mounts"] {
    const pgdata = pgdataOf(info);
    return info.mounts.filter((m) => pgdata === m.destination || pgdata.startsWith(`${m.destination}/`));
}

/**
 * The container by this name, if any, when it is ours in this role (its synapse-postgres.role label); one we did
 * not create is never ours to replace or remove.
 */
export async function ourContainer(
    name: string,
    role: "staging" | "standby" | "start-check",
): Promise<ContainerInfo | undefined> {
    const existing = await inspectContainer(name);
    if (existing && existing.labels[ROLE_LABEL] !== role) {
        throw new StepError(
            `A container named "${name}" exists that synapse-postgres did not create; rename or remove it, it is not ours to replace.`,
        );
    }
    return existing;
}

/**
 * Our staging container, started again when it is stopped: it has no restart policy, so a Docker daemon restart
 * leaves it stopped, and every step after restore refused until a new attempt. Started, never recreated; any
 * other container is returned as it is.
 */
export async function resumeStaging(info: ContainerInfo): Promise<ContainerInfo> {
    if (info.running || info.labels[ROLE_LABEL] !== "staging") return info;
    await startContainer(info.name);
    await waitUntilAccepting(info.name, superuserOf(info));
    return (await inspectContainer(info.name)) ?? info;
}

export async function requireContainer(name: string, role: string): Promise<ContainerInfo> {
    const info = await inspectContainer(name);
    if (!info) throw new StepError(`The ${role} container "${name}" does not exist.`);
    return info;
}

/** The bootstrap superuser of a container made from the official image: POSTGRES_USER, else postgres. */
export function superuserOf(info: ContainerInfo): string {
    return info.env.POSTGRES_USER || "postgres";
}

export async function containerLogTail(container: string, lines = 8): Promise<string> {
    try {
        // docker logs writes the container's stderr to its own stderr.
        const { stdout, stderr } = await run("docker", ["logs", "--tail", String(lines), container]);
        return (stdout + stderr).trim().split("\n").slice(-lines).join(" | ");
    } catch {
        return "(no logs)";
    }
}

/**
 * SIGINT is PostgreSQL's fast shutdown (the official image's STOPSIGNAL); SIGTERM is a smart shutdown that waits
 * for every client. `docker stop --signal` is ignored by engines older than API 1.42 (Debian's docker.io 20.10
 * here), so SIGINT goes by `docker kill --signal`, which every engine honours; `docker stop` then waits for the
 * exit, and only after the grace period kills.
 */
export async function stopContainer(name: string, graceSeconds = 120): Promise<void> {
    await run("docker", ["kill", "--signal", "SIGINT", name]).catch(() => undefined); // already stopped: fine
    await run("docker", ["stop", "--time", String(graceSeconds), name]);
}

export async function startContainer(name: string): Promise<void> {
    await run("docker", ["start", name]);
}

export async function removeContainer(name: string): Promise<void> {
    // Without --volumes: even an anonymous volume left by a wrong mount is kept rather than deleted.
    await run("docker", ["rm", "--force", name]);
}

/**
 * Runs a short-lived container of `image` with the data location mounted at `mountTarget` and no network, for
 * file work on a volume or folder whose owner (uid 999 or 70, mode 0700) the host user may not be.
 */
export async function runWithData(
    image: string,
    mounts: { data: DataLocation; target: string }[],
    argv: string[],
    opts: RunOptions = {},
): Promise<string> {
    const args = ["run", "--rm", "-i", "--network", "none", "--entrypoint", argv[0]];
    for (const m of mounts) args.push("-v", `${formatDataLocation(m.data)}:${m.target}`);
    args.push(image, ...argv.slice(1));
    return (await run("docker", args, opts)).stdout;
}

/** Every container (running or not) that mounts this volume or host folder. */
export async function containersUsing(data: DataLocation): Promise<ContainerInfo[]> {
    const { stdout } = await run("docker", ["ps", "-aq", "--no-trunc"]);
    const ids = stdout.split("\n").filter(Boolean);
    const found: ContainerInfo[] = [];
    for (const id of ids) {
        const info = await inspectContainer(id);
        if (!info) continue;
        const uses = info.mounts.some((m) =>
            data.kind === "volume"
                ? m.type === "volume" && m.name === data.name
                : m.type === "bind" && m.source === data.path,
        );
        if (uses) found.push(info);
    }
    return found;
}

/**
 * A reference that names exactly this image: its registry digest (postgres@sha256:...) when it was pulled, else
 * its local id (sha256:...), which `docker run` and postgres:image accept as well.
 */
export async function pinnedReference(imageId: string): Promise<string> {
    const digests = await run("docker", ["image", "inspect", "-f", "{{json .RepoDigests}}", imageId]).then(
        (r) => JSON.parse(r.stdout) as string[] | null,
        () => null,
    );
    return digests?.[0] ?? imageId;
}
