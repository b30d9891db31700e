// rehearse: the whole upgrade on a copy, while Synapse keeps serving, to learn the downtime and the problems
// before the maintenance window. A consistent dump of the live old cluster (pg_dump's snapshot; Synapse is not
// stopped), a restore into a throw-away container and volume of the target major, the config check, verify, and
// a report. The old cluster is only read. Without --keep everything the rehearsal created is removed.
import { Readable } from "node:stream";
import { copyConfig } from "../config/copy-config";
import { databasesSize, dumpCluster } from "../dump/dump";
import { formatBytes } from "../host";
import { hostFolders } from "../host/folders";
import {
    ContainerInfo,
    inspectContainer,
    mountsHoldingPgdata,
    pgdataOf,
    removeContainer,
    requireContainer,
    startContainer,
    stopContainer,
    superuserOf,
} from "../docker/containers";
import { query, quoteLiteral, serverVersion, waitUntilAccepting } from "../docker/psql";
import { ProcessError, run, runPiped } from "../docker/process";
import { restoreCluster } from "../dump/restore";
import { preparePgUpgrade } from "../pg-upgrade/prepare";
import { runPgUpgrade } from "../pg-upgrade/upgrade";
import { checkSpace } from "./preflight";
import { NO_ARCHIVING, removeStandby, standbyContainerName } from "../pg-upgrade/standby";
import { StepError } from "../step-error";
import { readMarkerIn, readTargetState } from "../target/markers";
import { verifyClusters } from "./verify";
import { MANAGED_LABEL, ourLabels } from "../names";
import * as path from "node:path";

export interface RehearseInput {
    container: string;
    to: number;
    /** The target image; default the old image's tag with the old major replaced (postgres:15-alpine -> 17). */
    image?: string;
    keep: boolean;
    password: string;
    loginUser: string;
    loginDatabase: string;
    /** The real run's backupDir, to check its free space. */
    backupDir?: string;
    /** Rehearse method pg_upgrade: on a physical copy (pg_basebackup) of the live cluster. */
    physical?: boolean;
}

export interface RehearsalReport {
    method: "pg_upgrade" | "dump";
    /** Method pg_upgrade: link (on a standby made before the downtime) or copy, as the real run would do it. */
    pgUpgradeVia?: "link" | "copy";
    source: { container: string; version: string; databasesBytes: number };
    target: { container: string; version: string; image: string; kept: boolean };
    verified: boolean;
    /** Seconds per step of the rehearsal. */
    timings: Record<string, number>;
    /** preflight + dump + restore + copy-config + verify + the switch (stops, the new container's start, serve) + step start-ups. */
    predictedDowntimeSeconds: number;
    dumpBytes: number;
    /** Everything the real upgrade would meet, one sentence each. */
    problems: string[];
    /** Differences explained by Synapse writing during the rehearsal: not problems. */
    liveWrites: string[];
}

export function defaultTargetImage(oldImage: string, fromMajor: number, to: number): string | undefined {
    const at = oldImage.lastIndexOf(":");
    if (at < 0 || oldImage.includes("@")) return undefined;
    const tag = oldImage.slice(at + 1);
    const replaced = tag.replace(new RegExp(`^${fromMajor}(\\.\\d+)?(?=$|-)`), String(to));
    return replaced === tag ? undefined : `${oldImage.slice(0, at)}:${replaced}`;
}

async function timed<T>(timings: Record<string, number>, name: string, work: () => Promise<T>): Promise<T> {
    const start = Date.now();
    try {
        return await work();
    } finally {
        timings[name] = (Date.now() - start) / 1000;
    }
}

/** One rehearsal under way: what stands for the old cluster, where the copy goes, and what it found so far. */
interface Rehearsal {
    input: RehearseInput;
    old: ContainerInfo;
    user: string;
    version: string;
    image: string;
    databasesBytes: number;
    /** The rehearsal's new cluster: its container and volume. */
    name: string;
    volume: string;
    /** The cluster the copy is made from: the live one, or (pg_upgrade) a physical copy of it. */
    source: string;
    /** A private folder for the dump. */
    work: string;
    timings: Record<string, number>;
    problems: string[];
    liveWrites: string[];
    dumpBytes: number;
    via?: "link" | "copy";
}

export async function rehearse(input: RehearseInput): Promise<RehearsalReport> {
    const r = await startRehearsal(input);
    let kept = false;
    try {
        const copied = input.physical ? await upgradeCopy(r) : await dumpCopy(r);
        if (!copied) return rehearsalReport(r, { container: r.name, version: "", image: r.image, kept: false }, false);
        const verified = await checkCopy(r);
        const version = (await serverVersion(r.name, r.user)).text;
        await timeSwitch(r);
        // What the real run adds: preflight's checks, and starting each of its step processes in the downtime
        // (preflight, dump, restore or upgrade, copy-config, verify, cutover, serve).
        await timed(r.timings, "preflight", () =>
            readTargetState({ kind: "volume", name: r.volume }, input.to, r.image).then(() =>
                databasesSize(input.container, r.user),
            ),
        );
        r.timings["step start-up"] = (input.physical ? 6 : 7) * (await stepStartup());
        r.problems.push(...(await knownProblems(input, r.user, r.databasesBytes)));
        kept = input.keep;
        return rehearsalReport(r, { container: r.name, version, image: r.image, kept }, verified);
    } finally {
        if (!kept) await removeRehearsal(r.name, r.volume);
        if (input.physical) {
            await removeStandby(standbyContainerName(r.name)).catch(() => undefined);
            await removeRehearsal(r.source, `${r.source}-data`);
        }
        await (await hostFolders()).remove(r.work);
    }
}

/** The live old cluster checked, the target image found, and room for the copy: refused before anything is made. */
async function startRehearsal(input: RehearseInput): Promise<Rehearsal> {
    const old = await requireContainer(input.container, "old");
    if (!old.running)
        throw new StepError(
            `The old container "${input.container}" is not running; a rehearsal reads the live cluster.`,
        );
    const user = superuserOf(old);
    const version = await serverVersion(input.container, user);
    if (version.major >= input.to)
        throw new StepError(
            `"${input.container}" runs PostgreSQL ${version.text}, not older than ${input.to}: nothing to rehearse.`,
        );
    const image = input.image ?? defaultTargetImage(old.image, version.major, input.to);
    if (!image) throw new StepError(`Cannot tell the ${input.to} image from "${old.image}"; give it with --image.`);
    const databasesBytes = await databasesSize(input.container, user);
    const name = `${input.container}-rehearsal-${input.to}`;
    const volume = `${name}-data`;
    const host = await hostFolders();
    const work = await host.makeTempDir("synapse-pg-rehearsal-");
    await removeRehearsal(name, volume);
    // Its own copy needs room like the real upgrade's: refused before anything is written, not a full disk later.
    const where = {
        targetData: { kind: "volume" as const, name: volume },
        backupDir: input.physical ? undefined : work,
    };
    await checkSpace(where, databasesBytes, { restoreWal: !input.physical }).catch(async (err) => {
        await host.remove(work);
        throw err;
    });
    await run("docker", ["volume", "create", ...ourLabels("rehearsal"), volume]);
    // pg_upgrade needs a stopped old cluster: it is rehearsed on a physical copy, which then stands for the old one.
    const source = input.physical ? `${name}-source` : input.container;
    const found = { timings: {}, problems: [], liveWrites: [], dumpBytes: 0 };
    return { input, old, user, version: version.text, image, databasesBytes, name, volume, source, work, ...found };
}

/** Method pg_upgrade on a physical copy; false when pg_upgrade or the binaries' probe refused (a problem found). */
async function upgradeCopy(r: Rehearsal): Promise<boolean> {
    await physicalCopy(r.old, r.source, r.user);
    const upgradeInput = {
        container: r.source,
        staging: r.name,
        image: r.image,
        data: { kind: "volume" as const, name: r.volume },
        major: r.input.to,
        password: r.input.password,
        loginUser: r.input.loginUser,
    };
    try {
        // The configuration is checked later, as copy-config does, so a rejected setting is one problem among
        // the others and the rest is still rehearsed.
        await preparePgUpgrade(upgradeInput, { config: false });
        r.via = (await timed(r.timings, "upgrade", () => runPgUpgrade(upgradeInput))).via;
        return true;
    } catch (err) {
        if (!(err instanceof StepError)) throw err;
        // What pg_upgrade (or the binaries' probe) refuses is the rehearsal's finding, not its failure.
        r.problems.push(err.message);
        return false;
    }
}

/** The dump methods: a dump of the live cluster, restored into the rehearsal's own cluster. */
async function dumpCopy(r: Rehearsal): Promise<boolean> {
    const { input } = r;
    const dump = await timed(r.timings, "dump", () =>
        dumpCluster({
            container: input.container,
            outDir: r.work,
            name: "rehearsal",
            toolImage: r.image,
            password: input.password,
        }),
    );
    r.dumpBytes = dump.manifest.bytes;
    const data = { kind: "volume" as const, name: r.volume };
    await timed(r.timings, "restore", () =>
        restoreCluster({
            container: r.name,
            image: r.image,
            data,
            major: input.to,
            dumpPath: dump.path,
            password: input.password,
            loginUser: input.loginUser,
        }),
    );
    return true;
}

/** copy-config and verify, as the real run does them; what differs because Synapse kept writing is not a problem. */
async function checkCopy(r: Rehearsal): Promise<boolean> {
    const { input } = r;
    await timed(r.timings, "copy-config", () => copyConfig({ from: r.source, to: r.name })).catch((err: Error) => {
        if (!(err instanceof StepError)) throw err;
        r.problems.push(err.message);
    });
    const login = { loginUser: input.loginUser, loginDatabase: input.loginDatabase, password: input.password };
    const report = await timed(r.timings, "verify", () => verifyClusters({ old: r.source, new: r.name, ...login }));
    for (const c of report.comparisons.filter((c) => !c.same)) {
        // Rows and sequences that grew in the live cluster after the snapshot: Synapse kept writing.
        const grew = (c.what.startsWith("table ") || c.what.startsWith("sequence ")) && Number(c.old) > Number(c.new);
        (grew ? r.liveWrites : r.problems).push(`${c.what}: ${c.old} in old, ${c.new} in the rehearsal`);
    }
    if (!report.login.ok)
        r.problems.push(
            `Synapse's role ${input.loginUser} cannot log in to the new cluster with the configured password: ${report.login.error}.`,
        );
    return r.problems.length === 0;
}

/**
 * The switch: two clean stops (the staging and the old server; the live old one is not stopped here, so the
 * staging's stop stands for both), a start of the new server and the container's first health check. The real
 * switch also creates the serving container (not just starts one) and runs serve, which looks at the containers
 * and the new server again: timed here with the same calls on the rehearsal's server.
 */
async function timeSwitch(r: Rehearsal): Promise<void> {
    const { name, user, timings } = r;
    const stop = await timed(timings, "stop", () => stopContainer(name)).then(() => timings.stop);
    await timed(timings, "start", async () => {
        await startContainer(name);
        await waitUntilAccepting(name, user);
    });
    await timed(timings, "serve", async () => {
        const probe = `${name}-create-probe`;
        await run("docker", ["create", "--name", probe, "--network", "none", r.image]);
        await removeContainer(probe);
        await inspectContainer(name);
        await waitUntilAccepting(name, user);
        await readMarkerIn(name, user);
        await serverVersion(name, user);
    });
    timings.switch = 2 * stop + timings.start + timings.serve;
    delete timings.stop;
    delete timings.start;
    delete timings.serve;
}

function rehearsalReport(r: Rehearsal, target: RehearsalReport["target"], verified: boolean): RehearsalReport {
    const predicted = Object.values(r.timings).reduce((s, t) => s + t, 0);
    return {
        method: r.input.physical ? "pg_upgrade" : "dump",
        source: { container: r.input.container, version: r.version, databasesBytes: r.databasesBytes },
        target,
        verified,
        timings: Object.fromEntries(Object.entries(r.timings).map(([k, v]) => [k, Math.round(v * 10) / 10])),
        predictedDowntimeSeconds: Math.round(predicted * 10) / 10,
        dumpBytes: r.dumpBytes,
        problems: r.problems,
        liveWrites: r.liveWrites,
        ...(r.via ? { pgUpgradeVia: r.via } : {}),
    };
}

/**
 * A physical copy of the live cluster for rehearsing pg_upgrade: pg_basebackup in the old container streams a tar
 * (with the WAL it needs) into a new volume, and a container of the old image recovers it to a consistent
 * cluster. The live cluster is only read, through a replication connection on its local socket. The copy is
 * initialised already, so its container needs no password: none is in its environment.
 */
async function physicalCopy(old: ContainerInfo, copy: string, user: string): Promise<void> {
    const pgdata = pgdataOf(old);
    const [mount] = mountsHoldingPgdata(old);
    if (!mount) throw new StepError(`The old container "${old.name}" has no volume or folder at its PGDATA ${pgdata}.`);
    const volume = `${copy}-data`;
    const onVolume = ["-v", `${volume}:${mount.destination}`];
    await run("docker", ["volume", "create", ...ourLabels("rehearsal"), volume]);
    const inCopy = ([program, ...args]: string[], opts: { stdin?: Readable; user?: string } = {}) => {
        const options = ["--rm", "-i", "--network", "none", "--user", opts.user ?? "postgres", ...onVolume];
        return run("docker", ["run", ...options, "--entrypoint", program, old.imageId, ...args], { stdin: opts.stdin });
    };
    // A new volume's root belongs to root: PGDATA is made for the image's postgres user, the files unpacked as it.
    await inCopy(["install", "-d", "-m", "0700", "-o", "postgres", "-g", "postgres", pgdata], { user: "root" });
    const basebackup = ["-U", user, "-D", "-", "-F", "tar", "-X", "fetch", "--checkpoint", "fast"];
    await runPiped(
        (stdout) =>
            run("docker", ["exec", "-u", "postgres", old.name, "pg_basebackup", ...basebackup], { stdout }).catch(
                (err) => {
                    if (!(err instanceof ProcessError)) throw err;
                    throw new StepError(
                        `pg_basebackup of "${old.name}" for the rehearsal failed: ${err.stderrTail.trim().split("\n").pop()}`,
                    );
                },
            ),
        (stdin) => inCopy(["tar", "-x", "-f", "-", "-C", pgdata], { stdin }),
    );
    const env = ["-e", `PGDATA=${pgdata}`, "-e", `POSTGRES_USER=${user}`];
    const options = ["-d", "--name", copy, ...ourLabels("rehearsal"), ...env, "--stop-signal", "SIGINT", ...onVolume];
    await run("docker", ["run", ...options, old.imageId, "postgres", ...NO_ARCHIVING]);
    await waitUntilAccepting(copy, user);
}

/** What the real run would meet that the copy cannot show by failing: md5 hashes, locale, disk space. */
async function knownProblems(input: RehearseInput, user: string, databasesBytes: number): Promise<string[]> {
    const problems: string[] = [];
    const md5 = (
        await query(
            input.container,
            user,
            `SELECT rolname FROM pg_authid WHERE rolpassword LIKE 'md5%' AND rolname <> ${quoteLiteral(input.loginUser)} ORDER BY 1`,
        )
    ).map(([r]) => r);
    if (md5.length)
        problems.push(
            `Role(s) ${md5.join(", ")} have md5 password hashes, which a scram-sha-256 access rule refuses and PostgreSQL 18 deprecates: set their passwords again with psql's \\password.`,
        );
    const locale = await query(
        input.container,
        user,
        `SELECT datcollate, datctype FROM pg_database WHERE datname = ${quoteLiteral(input.loginDatabase)}`,
    );
    if (locale[0] && (locale[0][0] !== "C" || locale[0][1] !== "C")) {
        problems.push(
            `The ${input.loginDatabase} database has collation ${locale[0][0]} and ctype ${locale[0][1]}; Synapse requires C for both (it refuses to start otherwise unless allow_unsafe_locale is set).`,
        );
    }
    if (input.backupDir) {
        const free = await (await hostFolders()).freeBytes(input.backupDir).catch(() => -1);
        if (free < 0) problems.push(`The backup folder ${input.backupDir} does not exist.`);
        else if (free < databasesBytes)
            problems.push(
                `The backup folder ${input.backupDir} has ${formatBytes(free)} free; the real dump may need ${formatBytes(databasesBytes)}.`,
            );
    }
    return problems;
}

/** How long one step process takes to start, as a command resource starts it (the bin script, see command-line.ts). */
async function stepStartup(): Promise<number> {
    const start = Date.now();
    await run(process.execPath, [path.resolve(__dirname, "../../bin/synapse-pg"), "--help"]).catch(() => undefined);
    return (Date.now() - start) / 1000;
}

async function removeRehearsal(name: string, volume: string): Promise<void> {
    const existing = await inspectContainer(name);
    if (existing) {
        if (existing.labels[MANAGED_LABEL] !== "true")
            throw new StepError(
                `A container named "${name}" exists that synapse-postgres did not create; remove it or it would be mistaken for a rehearsal.`,
            );
        await removeContainer(name);
    }
    await run("docker", ["volume", "rm", "-f", volume]).catch(() => undefined);
}
