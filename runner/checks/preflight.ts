// preflight: everything that can be known before Synapse's database is touched. It changes nothing but creating
// postgres:backupDir (and backupCopyDir) when missing; each problem is one sentence saying what is wrong and what
// to do.
import { requireUpgradeWhereItBegan } from "../target/where-it-began";
import { checkCopyDir } from "../dump/copy";
import { checkBackupSpace, ensureBackupDir } from "../dump/dump";
import { formatBytes } from "../host";
import { hostFolders } from "../host/folders";
import { run } from "../docker/process";
import { ContainerInfo, inspectContainer, requireContainer, runWithData, superuserOf } from "../docker/containers";
import { query, whenAccepting } from "../docker/psql";
import { DataLocation, dataLayout, formatDataLocation } from "../target/layout";
import { requireFenceable } from "../switch/fence";
import { checkExtensions } from "./extensions";
import { tcpLoginError } from "./password";
import { StepError } from "../step-error";
import { foreignDataError, hasServed, readTargetState, readTargetStateThrough, TargetState } from "../target/markers";
import { CLUSTER_LABEL, MANAGED_LABEL, MIN_MAJOR, ROLE_LABEL } from "../names";
import * as path from "node:path";

export interface PreflightInput {
    /** The old cluster's container. */
    container: string;
    /** The new major, its image and data location. */
    targetMajor: number;
    targetImage: string;
    targetData: DataLocation;
    /** backupDir, to check free space for the dump. */
    backupDir?: string;
    /** backupCopyDir, on the machine the step runs on: created, and checked for space for the dump's copy. */
    backupCopyDir?: string;
    /** The staging container prepare made (method pg_upgrade): its marker is read through it, quickly. */
    staging?: string;
    /** Synapse's login and postgres:password: the new cluster gets the old one's password hashes. */
    login?: { user: string; database: string; password: string };
}

export interface PreflightResult {
    sourceVersion: string;
    sourceMajor: number;
    databasesBytes: number;
    /** What the new data location holds now. */
    target:
        | "empty"
        | "staging copy (will be redone)"
        | "served before a revert (will be set aside, kept)"
        | "prepared for pg_upgrade";
    /** The upgrade already switched to the new cluster: nothing is left to check. */
    alreadyUpgraded: boolean;
    /** Roles whose password is an md5 hash: they cannot log in through the new cluster's scram-sha-256 rule. */
    md5Roles: string[];
    /** postgres:backupDir did not exist and was created (mode 0700). */
    createdBackupDir?: boolean;
}

/** The new cluster holds the databases plus the indexes rebuilt and the temporary files of the load. */
const NEW_CLUSTER_MARGIN = 1.2;
/** The restore runs with max_wal_size 16GB (RESTORE_ONLY_SETTINGS): its WAL grows with the data up to that. */
const RESTORE_WAL_CAP = 16 * 1024 ** 3;
/** Left free for the running server and the system: a full disk would stop the live old cluster too. */
export const LIVE_MARGIN = 1024 ** 3;

export interface SpaceNeeds {
    /** The dump methods restore with pg_restore, whose WAL stays until a checkpoint. */
    restoreWal?: boolean;
    /** An earlier new cluster in a volume, copied into another volume before it is emptied (setAside). */
    setAsideBytes?: number;
}

/** What the new data location's file system needs, in parts, so a refusal can say what it counted. */
export function newClusterNeeds(
    databasesBytes: number,
    needs: SpaceNeeds,
    backupOnSameDisk: boolean,
): [string, number][] {
    const parts: [string, number][] = [["the new cluster", Math.ceil(databasesBytes * NEW_CLUSTER_MARGIN)]];
    if (needs.restoreWal) parts.push(["the restore's WAL", Math.min(databasesBytes, RESTORE_WAL_CAP)]);
    if (needs.setAsideBytes) parts.push(["the earlier new cluster set aside", needs.setAsideBytes]);
    if (backupOnSameDisk) parts.push(["the dump on the same disk", databasesBytes]);
    parts.push(["room left for the running server", LIVE_MARGIN]);
    return parts;
}

/**
 * Free space for the dump (backupDir) and for the new cluster (Docker's data root for a volume, the host folder's
 * file system otherwise): the databases' size with the restore's WAL, a set-aside copy and the dump when they share
 * that disk, and a margin for the live server. Also asked by pg_upgrade's prepare before its standby copy, which is
 * written while Synapse still serves, and by the rehearsal before its own copy.
 */
export async function checkSpace(
    input: Pick<PreflightInput, "targetData" | "backupDir">,
    databasesBytes: number,
    needs: SpaceNeeds = {},
): Promise<void> {
    const host = await hostFolders();
    const newDir =
        input.targetData.kind === "volume"
            ? (await run("docker", ["info", "--format", "{{.DockerRootDir}}"])).stdout.trim()
            : await nearestExisting(input.targetData.path);
    const newFs = await host.stat(newDir);
    let backupOnSameDisk = false;
    if (input.backupDir) {
        await checkBackupSpace(input.backupDir, databasesBytes);
        backupOnSameDisk = (await host.stat(input.backupDir))?.device === newFs?.device;
    }
    const parts = newClusterNeeds(databasesBytes, needs, backupOnSameDisk);
    const need = parts.reduce((sum, [, n]) => sum + n, 0);
    const free = await host.freeBytes(newDir);
    if (free < need) {
        const counted = parts.map(([what, n]) => `${formatBytes(n)} for ${what}`).join(", ");
        throw new StepError(
            `The new cluster's data location ${formatDataLocation(input.targetData)} (on the file system of ${newDir}) has ${formatBytes(free)} free but needs about ${formatBytes(need)} (${counted}); free ${formatBytes(need - free)} there or choose another postgres:dataRoot.`,
        );
    }
}

/** Bytes a data location holds, read with du in a helper container (its files belong to the image's user). */
async function dataBytes(data: DataLocation, major: number, image: string): Promise<number> {
    const { mountTarget } = dataLayout(major);
    const out = await runWithData(image, [{ data, target: mountTarget }], ["du", "-sb", mountTarget]);
    return Number(out.trim().split(/\s/)[0]) || 0;
}

async function nearestExisting(dir: string): Promise<string> {
    const host = await hostFolders();
    for (let d = dir; ; d = path.dirname(d)) {
        if ((await host.stat(d)) || d === path.dirname(d)) return d;
    }
}

/**
 * The old container must stay stopped once the new cluster serves. With `restart: always` (some compose files
 * have it) a reboot or a Docker daemon restart starts it again beside the new cluster, and two servers answer
 * to Synapse's host name; `unless-stopped` keeps a container we stopped stopped.
 */
export function requireSafeRestartPolicy(old: ContainerInfo): void {
    if (old.restartPolicy !== "always") return;
    throw new StepError(
        `The old container "${old.name}" has restart policy "always": after a reboot or a Docker daemon restart it would start again beside the new cluster, and two servers would answer to Synapse; change it first with \`docker update --restart unless-stopped ${old.name}\` (and \`restart: unless-stopped\` in its compose file, so the next docker compose up keeps it), and run pulumi up again.`,
    );
}

export async function preflight(input: PreflightInput): Promise<PreflightResult> {
    // Current Synapse releases refuse PostgreSQL older than 14.
    if (input.targetMajor < MIN_MAJOR) {
        throw new StepError(
            `PostgreSQL ${input.targetMajor} is older than current Synapse supports (${MIN_MAJOR} or newer); choose a newer target.`,
        );
    }
    const [old, staging] = await Promise.all([
        requireContainer(input.container, "old"),
        input.staging ? inspectContainer(input.staging) : undefined,
    ]);
    requireSafeRestartPolicy(old);
    requireFenceable(old);
    if (input.staging)
        await requireUpgradeWhereItBegan(input.container, input.staging, input.targetData, input.targetMajor);
    const user = superuserOf(old);
    // Side by side: the new location's marker, and (when it runs) what the old server says.
    const [target, facts] = await Promise.all([
        staging?.labels[ROLE_LABEL] === "staging"
            ? readTargetStateThrough(staging.name, input.targetMajor)
            : readTargetState(input.targetData, input.targetMajor, input.targetImage),
        old.running ? whenAccepting(input.container, user, () => oldServerFacts(input.container, user)) : undefined,
    ]);
    if (!facts) {
        if (target.marker && hasServed(target.marker)) {
            return {
                sourceVersion: "",
                sourceMajor: 0,
                databasesBytes: 0,
                target: "served before a revert (will be set aside, kept)",
                alreadyUpgraded: true,
                md5Roles: [],
            };
        }
        throw new StepError(
            `The old container "${input.container}" is not running; start it so it can be checked and dumped.`,
        );
    }
    const { version, databasesBytes, md5Roles } = facts;
    requireUpgradeNow(input, facts);
    if (input.login) await requireDeclaredPassword(old, input.login);
    // A dump's restore creates each extension anew: the new image must have it (method pg_upgrade: prepare checks).
    if (!input.staging) await checkExtensions(input.container, user, input.targetImage);
    const createdBackupDir = input.backupDir ? await ensureBackupDir(input.backupDir) : undefined;
    const setAsideBytes =
        target.marker && hasServed(target.marker) && input.targetData.kind === "volume"
            ? await dataBytes(input.targetData, input.targetMajor, input.targetImage)
            : 0;
    await checkSpace(input, databasesBytes, { restoreWal: input.backupDir !== undefined, setAsideBytes });
    if (input.backupCopyDir) await checkCopyDir(input.backupCopyDir, databasesBytes);
    const state = describeTarget(input, target);
    return {
        sourceVersion: version.text,
        sourceMajor: version.major,
        databasesBytes,
        target: state,
        alreadyUpgraded: false,
        md5Roles,
        createdBackupDir,
    };
}

/** Not a downgrade, and no client left that could write after the copy and lose it at the switch. */
function requireUpgradeNow(
    input: PreflightInput,
    { version, clients }: { version: { text: string; major: number }; clients: string[][] },
): void {
    if (version.major >= input.targetMajor) {
        throw new StepError(
            `"${input.container}" runs PostgreSQL ${version.text}, not older than the target ${input.targetMajor}: this is a downgrade, which a dump cannot do safely; to go back, revert to the earlier stack config instead.`,
        );
    }
    if (clients.length > 0) {
        const who = clients.map(([app, addr, db]) => `${app} from ${addr} on ${db}`).join(", ");
        throw new StepError(
            `${clients.length} client(s) are still connected to "${input.container}" (${who}); stop Synapse and its workers first, or anything they write after the dump would be lost.`,
        );
    }
}

/** What the new data location holds, in the words preflight reports; data that is not ours is refused. */
function describeTarget(input: PreflightInput, target: TargetState): PreflightResult["target"] {
    if (!target.marker) {
        if (!target.isEmpty) throw foreignDataError(input.targetData, target);
        return "empty";
    }
    if (hasServed(target.marker)) return "served before a revert (will be set aside, kept)";
    return target.marker.state === "prepared" ? "prepared for pg_upgrade" : "staging copy (will be redone)";
}

/**
 * The new cluster gets the old one's password hashes and verify logs in with postgres:password, so a password
 * the old cluster refuses would stop the upgrade at verify, after the downtime: a typo, or a password changed
 * with the upgrade (the old cluster is never changed, so it cannot take the new one). After the clients check,
 * whose list this login must not join. A login that fails for another reason (an access rule) is verify's to say.
 */
async function requireDeclaredPassword(old: ContainerInfo, login: NonNullable<PreflightInput["login"]>): Promise<void> {
    const refused = await tcpLoginError(old, login.user, login.password, login.database);
    if (refused === undefined || !/password authentication failed/.test(refused)) return;
    const before =
        old.labels[MANAGED_LABEL] === "true"
            ? `set postgres:version back to ${old.labels[CLUSTER_LABEL]} and pulumi up, which sets it`
            : `psql's \\password ${login.user} in "${old.name}"`;
    throw new StepError(
        `postgres:password does not log in to "${old.name}" as ${login.user} (password authentication failed), and the new cluster gets the old one's password hashes, so Synapse could not log in after the switch either: if it is mistyped, set the password Synapse uses; to change it, do so before the upgrade (${before}) or after it.`,
    );
}

/**
 * Everything preflight asks the old server, in one psql (each docker exec is a tenth of a second of downtime):
 * its version, the other clients connected, the databases' size and the roles with md5 password hashes.
 */
async function oldServerFacts(container: string, user: string) {
    const [[versionNum, versionText, clientsJson, bytes, md5Json]] = await query(
        container,
        user,
        `SELECT current_setting('server_version_num'), current_setting('server_version'),
                (SELECT coalesce(json_agg(json_build_array(coalesce(nullif(application_name, ''), 'unnamed client'), coalesce(host(client_addr), 'local socket'), datname) ORDER BY application_name), '[]')
                   FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()),
                (SELECT sum(pg_database_size(datname))::bigint FROM pg_database),
                (SELECT coalesce(json_agg(rolname ORDER BY rolname), '[]') FROM pg_authid WHERE rolpassword LIKE 'md5%')`,
    );
    return {
        version: { text: versionText, major: Math.floor(Number(versionNum) / 10000) },
        clients: JSON.parse(clientsJson) as string[][],
        databasesBytes: Number(bytes),
        md5Roles: JSON.parse(md5Json) as string[],
    };
}
