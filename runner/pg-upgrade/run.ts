// pg_upgrade itself, in a throw-away container of the new image, and the started flag that tells a new cluster
// pg_upgrade has worked on (and which must be made again) from one it never touched.
import { promises as fs } from "node:fs";
import {
    ContainerInfo,
    inspectContainer,
    mountsHoldingPgdata,
    ourContainer,
    pgdataOf,
    removeContainer,
    runWithData,
    startContainer,
} from "../docker/containers";
import { existsIn } from "../docker/files";
import { waitUntilAccepting } from "../docker/psql";
import { dataLayout } from "../target/layout";
import { run, ProcessError } from "../docker/process";
import { pgUpgradeFailure, TailWriter } from "./output";
import { OLD_DATA } from "./check";
import { OLD_ROOT, WRAPPERS } from "./old-binaries";
import { StepError } from "../step-error";
import { NO_ARCHIVING, standbyDatadirFor } from "./standby";
import { Marker, markerPath, markerText } from "../target/markers";
import { ourLabels } from "../names";
import * as os from "node:os";
import * as path from "node:path";
import { PgUpgradeInput } from "./upgrade";

/**
 * Whether pg_upgrade has worked on this new cluster, which must then be initialised again. pg_upgrade removes its
 * output folder when it succeeds, so one left behind is an attempt that stopped; the started flag (written before
 * pg_upgrade runs, removed with the marker that says the upgrade is complete) also finds an attempt whose step was
 * killed after pg_upgrade itself succeeded, which leaves no output folder and a marker still at "prepared".
 */
export async function hasPgUpgradeLeftovers(staging: string, major: number): Promise<boolean> {
    const { pgdata } = dataLayout(major);
    const found = await Promise.all([
        existsIn(staging, `${pgdata}/pg_upgrade_output.d`),
        existsIn(staging, startedFlagPath(major)),
    ]);
    return found.some(Boolean);
}

/** In the new cluster's PGDATA from just before pg_upgrade runs until the upgrade's marker says "restored". */
const STARTED_FLAG = "synapse-pg-upgrade-started";

function startedFlagPath(major: number): string {
    return `${dataLayout(major).pgdata}/${STARTED_FLAG}`;
}

/** The started flag, through the stopped staging container (docker cp: no server, no helper container needed). */
export async function flagPgUpgradeStarted(staging: string, major: number): Promise<void> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "synapse-pg-flag-"));
    try {
        await fs.writeFile(path.join(dir, STARTED_FLAG), `pg_upgrade started ${new Date().toISOString()}\n`);
        await run("docker", ["cp", path.join(dir, STARTED_FLAG), `${staging}:${startedFlagPath(major)}`]);
    } finally {
        await fs.rm(dir, { recursive: true, force: true });
    }
}

/** The marker that says the upgrade is complete, and the started flag gone with it, in one docker exec. */
export async function markUpgraded(staging: string, major: number, marker: Marker): Promise<void> {
    await run(
        "docker",
        [
            "exec",
            "-i",
            "-u",
            "postgres",
            staging,
            "sh",
            "-c",
            'cat > "$1" && rm -f "$2"',
            "sh",
            markerPath(major),
            startedFlagPath(major),
        ],
        { stdin: markerText(marker) },
    );
}

function pgUpgradeContainerName(staging: string): string {
    return `${staging}-pg-upgrade`;
}

/**
 * pg_upgrade's container from an attempt whose step was killed: the daemon removes it when pg_upgrade exits
 * (--rm), but a killed client leaves it running on (holding the new location, which the re-run makes again) or,
 * killed between create and start, there for good, its name taken. Ours (the staging label), so removed.
 */
export async function removeLeftoverPgUpgrade(staging: string): Promise<void> {
    const name = pgUpgradeContainerName(staging);
    if (await ourContainer(name, "staging")) await removeContainer(name);
}

export async function startAndWait(container: string, superuser: string): Promise<void> {
    const info = await inspectContainer(container);
    if (info && !info.running) await startContainer(container);
    await waitUntilAccepting(container, superuser);
}

/**
 * pg_upgrade in a throw-away container of the new image, the old binaries mounted beside the new data, and either
 * the old data (copied: --copy) or the promoted standby in the new location itself (given away: --link).
 */
export async function pgUpgrade(
    input: PgUpgradeInput,
    old: ContainerInfo,
    superuser: string,
    volume: string,
    from: "old" | "standby",
): Promise<void> {
    const pgdata = pgdataOf(old);
    const dataMounts = from === "old" ? mountsHoldingPgdata(old) : [];
    if (from === "old" && dataMounts.length === 0)
        throw new StepError(
            `The old container "${old.name}" has no volume or folder at its PGDATA ${pgdata}; pg_upgrade needs its data files.`,
        );
    const log = new TailWriter("upgrade: ");
    const args = [...dockerRunArgs(input, volume, dataMounts), ...pgUpgradeArgs(input, pgdata, superuser, from)];
    const exited = await run("docker", args, { stdout: log }).then(
        () => undefined,
        (err: Error) => err,
    );
    if (exited && !(exited instanceof ProcessError)) throw exited;
    const said = pgUpgradeFailure(log.lines, exited !== undefined);
    if (said !== undefined) {
        const server = await serverLogTail(input, dataLayout(input.major).pgdata, log.lines.join("\n"));
        throw new StepError(
            `pg_upgrade stopped before the switch, the old cluster is unchanged and running${from === "old" ? " again" : ""}: ${said}${server ? ` (server log: ${server})` : ""}`,
        );
    }
}

/** pg_upgrade's container: the new image, the new data, the old binaries, and the old data for --copy. */
function dockerRunArgs(input: PgUpgradeInput, volume: string, dataMounts: ContainerInfo["mounts"]): string[] {
    const newData = input.data.kind === "volume" ? input.data.name : input.data.path;
    return [
        ["run", "--rm", "--init", "--name", pgUpgradeContainerName(input.staging)],
        ["--network", "none", "--user", "postgres", ...ourLabels("staging")],
        dataMounts.flatMap((m) => ["-v", `${m.type === "volume" ? m.name : m.source}:${OLD_DATA}${m.destination}`]),
        ["-v", `${newData}:${dataLayout(input.major).mountTarget}`, "-v", `${volume}:${OLD_ROOT}:ro`],
        ["--workdir", "/tmp", "--entrypoint", "pg_upgrade", input.image],
    ].flat();
}

function pgUpgradeArgs(input: PgUpgradeInput, pgdata: string, superuser: string, from: "old" | "standby"): string[] {
    const oldData = from === "old" ? `${OLD_DATA}${pgdata}` : standbyDatadirFor(input.major);
    return [
        ["--old-bindir", WRAPPERS, "--old-datadir", oldData, "--new-datadir", dataLayout(input.major).pgdata],
        ["--username", superuser, "--socketdir", "/tmp"],
        // The standby's files (one mount, one file system) are linked, never the old data's. --copy-file-range
        // (17+) copies inside the kernel; --no-sync because the step syncs while the servers start.
        from === "standby" ? ["--link"] : input.major >= 17 ? ["--copy-file-range"] : ["--copy"],
        ["--no-sync"],
        // Each database's schema dumped and restored side by side. Only under --init (dockerRunArgs): without
        // it, at 1 GB, workers failed ("Failure, exiting") in each of 4 runs while pg_upgrade said "Upgrade
        // Complete" with exit 0 and tables had no files (verify caught it); with it, none of 5 did. The likely
        // reason: as a container's PID 1, pg_upgrade also inherits the postmasters its pg_ctl starts, and its
        // waitpid(-1) for "a worker finished" can reap one of those instead and go on too early.
        ["--jobs", String(Math.min(os.availableParallelism(), 8))],
        // The servers pg_upgrade starts archive no WAL, except the real old cluster's (--copy), whose archive is
        // its own: a promoted standby's or the new cluster's WAL does not belong there (standby.ts, NO_ARCHIVING).
        [`--new-options=${NO_ARCHIVING.join(" ")}`],
        from === "standby" ? [`--old-options=${NO_ARCHIVING.join(" ")}`] : [],
    ].flat();
}

/** pg_upgrade names its log files in its failure message; the server's last lines usually say why. */
async function serverLogTail(input: PgUpgradeInput, pgdata: string, output: string): Promise<string> {
    const file = /"([^"]*pg_upgrade_(?:server|internal)\.log)"/.exec(output)?.[1];
    if (!file || !file.startsWith(pgdata)) return "";
    return runWithData(
        input.image,
        [{ data: input.data, target: dataLayout(input.major).mountTarget }],
        ["tail", "-n", "3", file],
    ).then(
        (t) => t.trim().split("\n").join(" | "),
        () => "",
    );
}
