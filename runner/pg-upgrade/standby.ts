// The standby copy of method pg_upgrade: the data copy taken out of the downtime, the old data still untouched.
//
// pg_upgrade --copy makes the copy of the data files part of the downtime (about a fifth of the guide's time at
// 1 GB). pg_upgrade --link makes no copy, but gives the files it links to the new cluster, so it must never run on
// the old data. So prepare, while Synapse still serves, makes a physical copy of the live old cluster that is ours
// to give away: a streaming standby (pg_basebackup -X stream -R, then the old image's own postgres replaying WAL)
// kept in a folder inside the new cluster's own volume or folder (hard links need one file system and one mount).
// At the downtime, once Synapse is stopped, the standby has replayed everything the old cluster wrote; it is
// promoted, shut down cleanly, and pg_upgrade --link turns it into the new cluster.
//
// The old cluster is only read: through a replication connection from inside its own network namespace (the
// official image trusts replication from 127.0.0.1), with no replication slot created in it. It keeps running
// through the whole upgrade. Where a standby cannot be made (wal_level minimal, no WAL senders, a replication
// connection refused), the upgrade copies the data during the downtime instead (pg_upgrade --copy). Unlogged
// tables, whose rows a standby never receives, are carried across at the downtime (not-replicated.ts).
import {
    containerLogTail,
    ContainerInfo,
    inspectContainer,
    ourContainer,
    removeContainer,
    stopContainer,
} from "../docker/containers";
import { query } from "../docker/psql";
import { sleep } from "../host";
import { DataLocation, dataLayout, formatDataLocation } from "../target/layout";
import { ProcessError, run } from "../docker/process";
import { clearAttver } from "./attver";
import { StepError } from "../step-error";
import { ROLE_LABEL, STANDBY_OF_LABEL, ourLabels } from "../names";

/** The standby's folder, relative to the new cluster's mount (its volume root or host folder). */
export const STANDBY_FOLDER = "synapse-pg-standby";
/** Where the standby container mounts the new cluster's volume or folder. */
const STANDBY_MOUNT = "/synapse-pg-new";
/** The standby's socket folder: it listens on no TCP address (it shares the old container's network namespace). */
const STANDBY_SOCKET = "/tmp";
/** Names the old container a standby follows, so whatever serves it next can find a standby left behind. */

export function standbyContainerName(staging: string): string {
    return `${staging}-standby`;
}

/** The standby's data folder as the pg_upgrade container (new image, new layout) sees it. */
export function standbyDatadirFor(major: number): string {
    return `${dataLayout(major).mountTarget}/${STANDBY_FOLDER}`;
}

/** Why this old cluster cannot be followed by a standby, in words for the step's output; undefined when it can. */
export async function standbyBlocker(container: string, superuser: string): Promise<string | undefined> {
    const [[walLevel, senders]] = await query(
        container,
        superuser,
        "SELECT current_setting('wal_level'), current_setting('max_wal_senders')",
    );
    if (walLevel === "minimal") return "the old cluster runs with wal_level = minimal, which streams no WAL";
    if (Number(senders) === 0) return "the old cluster has max_wal_senders = 0";
    // Unlogged tables are no reason: the upgrade carries what they hold once writes stopped (not-replicated.ts).
    return undefined;
}

/**
 * pg_basebackup of the live old cluster into the standby folder, then the old image's postgres on it as a hot
 * standby streaming from the old server. Returns once it streams. Throws a StepError saying why when it cannot.
 */
export async function startStandby(
    old: ContainerInfo,
    superuser: string,
    name: string,
    data: DataLocation,
): Promise<void> {
    await removeStandby(name);
    const [[port]] = await query(old.name, superuser, "SELECT current_setting('port')");
    const folder = `${STANDBY_MOUNT}/${STANDBY_FOLDER}`;
    const mount = `${formatDataLocation(data)}:${STANDBY_MOUNT}`;
    // The mount's root belongs to root for a new volume (18+: the parent of PGDATA): the folder is made for the
    // postgres user, empty, every time (a standby is made again, never resumed).
    const makeFolder = `rm -rf '${folder}' && install -d -m 0700 -o postgres -g postgres '${folder}'`;
    await run("docker", [
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        mount,
        "--entrypoint",
        "sh",
        old.imageId,
        "-c",
        makeFolder,
    ]);
    // From inside the old container's network namespace: 127.0.0.1 is the old server, whose replication rule for
    // 127.0.0.1 is trust in the official image. -X stream (with pg_basebackup's temporary slot) keeps the WAL it
    // needs; no slot is created in the old cluster. --no-sync: the files are made durable, or thrown away, by the
    // upgrade.
    const beside = ["--network", `container:${old.name}`, "--user", "postgres", "-v", mount, ...ourLabels("standby")];
    const basebackup = [
        ["-h", "127.0.0.1", "-p", port, "-U", superuser, "-D", folder],
        ["-X", "stream", "-R", "--checkpoint", "fast", "--no-sync", "--label", "synapse-postgres standby"],
    ].flat();
    await run("docker", ["run", "--rm", ...beside, "--entrypoint", "pg_basebackup", old.imageId, ...basebackup]).catch(
        (err: Error) => {
            if (!(err instanceof ProcessError)) throw err;
            throw new StepError(`pg_basebackup from "${old.name}" failed: ${err.stderrTail.trim().split("\n").pop()}`);
        },
    );
    const labels = ["--label", `${STANDBY_OF_LABEL}=${old.name}`, "--stop-signal", "SIGINT"];
    await run("docker", [
        "run",
        "-d",
        "--name",
        name,
        ...beside,
        ...labels,
        "--entrypoint",
        "postgres",
        old.imageId,
        ...standbyServer(old, folder),
    ]);
    await waitStreaming(name, superuser, 60);
}

/**
 * The standby's server: the old container's own -c options first (a hot standby needs max_connections and the
 * like at least as high as its primary's), then ours: no TCP listener beside the old server, small shared memory,
 * and no WAL archiving (promoted, it would push its WAL and timeline history into the old cluster's archive).
 */
function standbyServer(old: ContainerInfo, folder: string): string[] {
    const ours = [
        "listen_addresses=",
        `unix_socket_directories=${STANDBY_SOCKET}`,
        "shared_buffers=128MB",
        "hot_standby=on",
        "max_wal_size=1GB",
    ];
    return ["-D", folder, ...serverOptions(old), ...ours.flatMap((o) => ["-c", o]), ...NO_ARCHIVING];
}

/**
 * For every copy of the old cluster we run (standby, staging, rehearsal): WAL archiving off. With the old
 * cluster's archive_command a copy would push its WAL and timeline history files into the old cluster's archive,
 * or fail to archive forever and fill its disk. The new cluster archives as configured once it serves.
 */
export const NO_ARCHIVING = ["-c", "archive_mode=off"];

/** The `-c name=value` options the old container's server was started with (postgres:settings, compose's command). */
function serverOptions(old: ContainerInfo): string[] {
    const cmd = old.cmd;
    if (cmd[0] !== "postgres") return [];
    const options: string[] = [];
    for (let i = 1; i < cmd.length; i++) {
        if (cmd[i] === "-c" && cmd[i + 1] !== undefined) options.push("-c", cmd[++i]);
        else if (cmd[i].startsWith("--") && cmd[i].includes("="))
            options.push("-c", cmd[i].slice(2).replace(/-/g, "_"));
    }
    return options;
}

/** psql in the standby container over its socket. */
function standbyQuery(name: string, superuser: string, sql: string): Promise<string[][]> {
    return query(name, superuser, sql, "postgres", STANDBY_SOCKET);
}

/** The standby's WAL receiver status ("streaming" once it follows the old server), or why there is none. */
async function receiverStatus(name: string, superuser: string): Promise<string> {
    const rows = await standbyQuery(name, superuser, "SELECT status FROM pg_stat_wal_receiver").catch((err: Error) => [
        [err.message],
    ]);
    return rows[0]?.[0] ?? "no WAL receiver";
}

async function waitStreaming(name: string, superuser: string, timeoutSeconds: number): Promise<void> {
    const deadline = Date.now() + timeoutSeconds * 1000;
    let last = "";
    while (Date.now() < deadline) {
        const info = await inspectContainer(name);
        if (!info?.running)
            throw new StepError(`the standby "${name}" stopped while starting: ${await containerLogTail(name, 4)}`);
        last = await receiverStatus(name, superuser);
        if (last === "streaming") return;
        await sleep(250);
    }
    throw new StepError(
        `the standby "${name}" did not stream from the old server within ${timeoutSeconds} s (${last})`,
    );
}

/** Whether the standby is there, ours, running and streaming: a standby that is not is never used. */
export async function isStreaming(name: string, superuser: string): Promise<boolean> {
    const info = await inspectContainer(name);
    if (!info?.running || info.labels[ROLE_LABEL] !== "standby") return false;
    return (await receiverStatus(name, superuser)) === "streaming";
}

/**
 * Synapse is stopped and no client is connected to the old server (preflight): everything it will ever have
 * written ends where its last WAL record ends. Read once, at the start of the downtime.
 */
export async function lastWritePosition(old: string, oldSuperuser: string): Promise<string> {
    const [[insert, segmentBytes, blockBytes]] = await query(
        old,
        oldSuperuser,
        "SELECT pg_current_wal_insert_lsn(), (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), current_setting('wal_block_size')",
    );
    return formatLsn(lastRecordEnd(parseLsn(insert), BigInt(segmentBytes), BigInt(blockBytes)));
}

/**
 * The standby replays up to the old server's last write (`lsn`, from lastWritePosition), is promoted (pg_upgrade
 * wants a primary's clean shutdown, not a standby's), cleared of 17.12's pg_attver markers, and stopped with a
 * fast shutdown. The check and the promotion
 * are one statement: promoted only once caught up, with no round trip between.
 */
export async function catchUpAndPromote(
    name: string,
    superuser: string,
    lsn: string,
    lap: (what: string) => void,
    timeoutSeconds = 120,
): Promise<void> {
    const deadline = Date.now() + timeoutSeconds * 1000;
    for (;;) {
        const [[promoted, receiving]] = await standbyQuery(
            name,
            superuser,
            `SELECT CASE WHEN pg_last_wal_replay_lsn() >= '${lsn}'::pg_lsn THEN pg_promote(true, 60)::text ELSE 'behind' END,
                    (SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming')`,
        );
        if (promoted === "true") break;
        if (promoted === "false")
            throw new StepError(
                `the standby "${name}" did not finish its promotion within 60 s: ${await containerLogTail(name, 4)}`,
            );
        if (receiving === "0")
            throw new StepError(
                `the standby "${name}" stopped streaming before it reached the old server's last write (${lsn})`,
            );
        if (Date.now() > deadline)
            throw new StepError(
                `the standby "${name}" did not replay up to the old server's last write (${lsn}) within ${timeoutSeconds} s`,
            );
        await sleep(100);
    }
    lap(`standby replayed the old server's WAL up to ${lsn} and was promoted`);
    // Promoted, it is a primary of its own, ours to change before its clean stop (pg-upgrade/attver.ts).
    const cleared = await clearAttver(name, superuser, STANDBY_SOCKET);
    if (cleared)
        lap(
            `cleared PostgreSQL 17.12's internal pg_attver marker from ${cleared} column(s), which pg_upgrade's dump would carry into a server that rejects it`,
        );
    await stopContainer(name);
    lap("standby stopped");
}

/**
 * Standbys of this container left by an upgrade that did not reach its switch (a revert, or an upgrade given up):
 * removed, so nothing keeps a replication connection to a cluster that serves again. Returns their names.
 */
export async function removeStandbysOf(container: string): Promise<string[]> {
    const { stdout } = await run("docker", [
        "ps",
        "-a",
        "--filter",
        `label=${STANDBY_OF_LABEL}=${container}`,
        "--format",
        "{{.Names}}",
    ]);
    const names = stdout.split("\n").filter(Boolean);
    for (const name of names) await removeStandby(name);
    return names;
}

/** A WAL position as PostgreSQL prints it ("0/56000028") and back. */
export function parseLsn(text: string): bigint {
    const m = /^([0-9A-F]+)\/([0-9A-F]+)$/i.exec(text.trim());
    if (!m) throw new Error(`not a WAL position: "${text}"`);
    return (BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`);
}

export function formatLsn(lsn: bigint): string {
    return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/**
 * Where the last record written ends, from the insert position. On a page nothing has been written to yet, the
 * insert position lies past the page's header (24 bytes; 40 on a segment's first page), while a standby's replay
 * position stops at the boundary: waiting for the insert position itself would wait for the old server's next
 * record, which an idle server writes only every 15 s or so (running-transactions snapshots).
 */
export function lastRecordEnd(insert: bigint, segmentBytes: bigint, blockBytes: bigint): bigint {
    if (insert % segmentBytes === 40n) return insert - 40n;
    if (insert % blockBytes === 24n) return insert - 24n;
    return insert;
}

/**
 * Removes the standby container (never its folder: that goes with the new cluster's location, see the callers).
 * Returns whether there was one.
 */
export async function removeStandby(name: string): Promise<boolean> {
    if (!(await ourContainer(name, "standby"))) return false;
    await removeContainer(name);
    return true;
}
