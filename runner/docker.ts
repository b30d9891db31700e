// Talking to containers: inspect, exec psql, start, stop, run a short-lived helper. Every call goes through
// process.ts; a password is only ever passed by name (`-e PGPASSWORD`), the value coming from our environment.
import { Writable } from "node:stream";
import { ProcessError, run, RunOptions } from "./process";
import { DataLocation, formatDataLocation } from "./layout";
import { StepError } from "./step-error";
import { ROLE_LABEL } from "./names";

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

/** Label on every container and volume this program creates; only those are ever stopped or removed by us. */

export async function inspectContainer(name: string): Promise<ContainerInfo | undefined> {
    let out: string;
    try {
        ({ stdout: out } = await run("docker", ["container", "inspect", name]));
    } catch (err) {
        if (String((err as Error).message).includes("No such container")) return undefined;
        throw err;
    }
    const [raw] = JSON.parse(out);
    const env: Record<string, string> = {};
    for (const kv of raw.Config.Env ?? []) {
        const i = kv.indexOf("=");
        env[kv.slice(0, i)] = kv.slice(i + 1);
    }
    const networks: ContainerInfo["networks"] = {};
    for (const [net, n] of Object.entries<any>(raw.NetworkSettings?.Networks ?? {})) {
        networks[net] = { aliases: n.Aliases ?? [], ip: n.IPAddress ?? "", staticIp: n.IPAMConfig?.IPv4Address || undefined };
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
        mounts: (raw.Mounts ?? []).map((m: any) => ({
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
export async function ourContainer(name: string, role: "staging" | "standby" | "start-check"): Promise<ContainerInfo | undefined> {
    const existing = await inspectContainer(name);
    if (existing && existing.labels[ROLE_LABEL] !== role) {
        throw new StepError(`A container named "${name}" exists that synapse-postgres did not create; rename or remove it, it is not ours to replace.`);
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

const FIELD = "\x1f";
const RECORD = "\x1e";

/**
 * Runs one SQL statement in the container over its local socket (trusted in the official image) and returns the
 * rows. Fields and records are split on ASCII separators, so text with commas or newlines survives. `socketDir`
 * for a server whose socket is not in psql's default folder (pg_upgrade's standby).
 */
export async function query(container: string, user: string, sql: string, database = "postgres", socketDir?: string): Promise<string[][]> {
    const { stdout } = await run("docker", [
        "exec", container,
        "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        ...(socketDir ? ["-h", socketDir] : []),
        "-F", FIELD, "-R", RECORD, "-U", user, "-d", dbConninfo(database), "-c", sql,
    ]);
    const text = stdout.replace(/\n$/, "");
    if (text === "") return [];
    return text.split(RECORD).map((r) => r.replace(/^\n/, "").split(FIELD));
}

/**
 * One query in every database that accepts connections, side by side: each database's rows. A database the
 * superuser cannot reach over the socket (a pg_hba.conf rule of the user's) is named in one sentence: the upgrade
 * reads every database so (the write horizon, verify), so it cannot go on without it.
 */
export async function queryEachDatabase(container: string, user: string, sql: string, socketDir?: string): Promise<{ database: string; rows: string[][] }[]> {
    const databases = (await query(container, user, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1", "postgres", socketDir)).map(([d]) => d);
    const read = await Promise.allSettled(databases.map((database) => query(container, user, sql, database, socketDir)));
    const unread = databases.filter((_, i) => read[i].status === "rejected");
    if (unread.length > 0) {
        const reason = ((read.find((r) => r.status === "rejected") as PromiseRejectedResult).reason as Error).message.trim().split("\n").pop();
        throw new StepError(`"${container}" refuses its superuser ${user} a local connection to the database(s) ${unread.join(", ")} (${reason}), and the upgrade reads every database so: allow it there in pg_hba.conf and run pulumi up again.`);
    }
    return databases.map((database, i) => ({ database, rows: (read[i] as PromiseFulfilledResult<string[][]>).value }));
}

/**
 * Like query, for a script of several statements (and psql meta-commands) read from stdin: all their rows, and
 * psql's last stderr lines. psql ends each result with a newline instead of the record separator, so a newline
 * also ends a record here: for values without newlines (names, numbers, settings). A nested psql gets the same
 * separators with \pset fieldsep '\x1f' and recordsep '\x1e'.
 */
export async function queryScript(container: string, user: string, script: string, database = "postgres"): Promise<{ rows: string[][]; stderr: string }> {
    const { stdout, stderr } = await run("docker", [
        "exec", "-i", container,
        "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-F", FIELD, "-R", RECORD, "-U", user, "-d", dbConninfo(database),
    ], { stdin: script });
    return { rows: stdout.split(new RegExp(`${RECORD}|\n`)).filter((r) => r !== "").map((r) => r.split(FIELD)), stderr };
}

export async function serverVersion(container: string, user: string): Promise<{ text: string; major: number }> {
    const [[num, text]] = await query(container, user, "SELECT current_setting('server_version_num'), current_setting('server_version')");
    return { text, major: Math.floor(Number(num) / 10000) };
}

/**
 * Waits until the server answers over TCP on 127.0.0.1 inside the container. During first start the image runs
 * a temporary server on the socket only, so a socket check (or pg_isready on the socket) says "ready" too early.
 */
export async function waitUntilAccepting(container: string, user: string, timeoutSeconds = 180): Promise<void> {
    const deadline = Date.now() + timeoutSeconds * 1000;
    let last = "";
    while (Date.now() < deadline) {
        const info = await inspectContainer(container);
        if (!info) throw new StepError(`The container "${container}" disappeared while starting.`);
        if (!info.running) {
            const logs = await containerLogTail(container);
            throw new StepError(`PostgreSQL in "${container}" stopped while starting: ${logs}`);
        }
        try {
            await run("docker", ["exec", container, "psql", "-X", "-h", "127.0.0.1", "-U", user, "-d", "postgres", "-Atc", "SELECT 1"]);
            return;
        } catch (err) {
            last = (err as Error).message;
        }
        // Often: during an upgrade's downtime each wait for a server is on the clock (a check is ~0.07 s).
        await sleep(100);
    }
    throw new StepError(`PostgreSQL in "${container}" did not accept connections within ${timeoutSeconds} s (${last}).`);
}

/** What psql says while a server is still starting (or not listening yet), as opposed to a real refusal. */
const NOT_YET_ACCEPTING = /starting up|not yet accepting|could not connect|Connection refused|No such file or directory/;

/**
 * Runs `work` against the container's server; when that fails because the server is not up yet, waits until it
 * accepts connections and runs it once more. For the first step that reads a server Pulumi may have just created
 * or started (it does not wait for health, see components/cluster.ts): free when the server is up, a clear
 * message when it never comes, and any other failure (a wrong role, say) reported at once.
 */
export async function whenAccepting<T>(container: string, user: string, work: () => Promise<T>): Promise<T> {
    try {
        return await work();
    } catch (err) {
        if (!(err instanceof ProcessError) || !NOT_YET_ACCEPTING.test(err.message)) throw err;
        await waitUntilAccepting(container, user, 120);
        return work();
    }
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
            data.kind === "volume" ? m.type === "volume" && m.name === data.name : m.type === "bind" && m.source === data.path,
        );
        if (uses) found.push(info);
    }
    return found;
}

export function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A reference that names exactly this image: its registry digest (postgres@sha256:...) when it was pulled, else
 * its local id (sha256:...), which `docker run` and postgres:image accept as well.
 */
export async function pinnedReference(imageId: string): Promise<string> {
    const digests = await run("docker", ["image", "inspect", "-f", "{{json .RepoDigests}}", imageId]).then((r) => JSON.parse(r.stdout) as string[] | null, () => null);
    return digests?.[0] ?? imageId;
}

/** Quotes an SQL string literal (standard_conforming_strings, on by default since 9.1). */
export function quoteLiteral(text: string): string {
    return `'${text.replace(/'/g, "''")}'`;
}

/**
 * A file of a container's file system, running or stopped, through `docker cp` (a tar stream of one file): much
 * cheaper than a throw-away container. Undefined when it is missing.
 */
export async function copyFileOut(container: string, file: string): Promise<Buffer | undefined> {
    const chunks: Buffer[] = [];
    if (!(await copyOut(container, file, (chunk) => chunks.push(chunk)))) return undefined;
    const tar = Buffer.concat(chunks);
    const size = parseInt(tar.subarray(124, 136).toString("latin1").replace(/\0.*$/s, "").trim() || "0", 8);
    return tar.subarray(512, 512 + size);
}

/** Whether a path exists in a container's file system, running or stopped (its tar stream is discarded). */
export async function existsIn(container: string, file: string): Promise<boolean> {
    return copyOut(container, file, () => undefined);
}

/** `docker cp <container>:<path> -`, each chunk of the tar stream to `onChunk`; false when the path is missing. */
async function copyOut(container: string, path: string, onChunk: (chunk: Buffer) => void): Promise<boolean> {
    try {
        await run("docker", ["cp", `${container}:${path}`, "-"], { stdout: new Writable({ write(chunk, _enc, done) { onChunk(chunk); done(); } }) });
        return true;
    } catch (err) {
        if (err instanceof ProcessError && /Could not find the file|No such container:path/i.test(err.message)) return false;
        throw err;
    }
}

/**
 * Writes a file inside a container as the postgres user, so the server owns what it reads. Written aside, its
 * length checked, flushed and renamed over the file: a kill or a full disk half-way (a killed client ends the
 * copy's input early) leaves the previous file whole, never a torn marker or configuration.
 */
export async function writeFileIn(container: string, file: string, text: string): Promise<void> {
    const script = 'cat > "$1.partial" && [ "$(wc -c < "$1.partial")" -eq "$2" ] && sync "$1.partial" && mv -f "$1.partial" "$1" && sync "$(dirname "$1")"';
    await run("docker", ["exec", "-i", "-u", "postgres", container, "sh", "-c", script, "sh", file, String(Buffer.byteLength(text))], { stdin: text });
}

/**
 * A database name as a libpq connection string, for every -d, --dbname and connection we make. libpq reads a bare
 * name holding "=" as a connection string (the class of CVE-2016-5424: a database named "host=elsewhere dbname=x"
 * would send our login elsewhere), and a name starting with "-" as a tool's option; inside a connection string
 * the value is only ever a name. Quoted as libpq's appendConnStrVal does.
 */
export function dbConninfo(database: string): string {
    return `dbname='${database.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

/** Quotes an SQL identifier the way PostgreSQL's quote_ident (and pg_dump's fmtId) does. */
export function quoteIdent(name: string): string {
    return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}
