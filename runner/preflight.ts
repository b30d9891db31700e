// preflight: everything that can be known before Synapse's database is touched. It changes nothing; each problem
// is one sentence saying what is wrong and what to do.
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { checkBackupSpace, formatBytes, freeBytes } from "./dump";
import { run } from "./process";
import { inspectContainer, query, requireContainer, superuserOf, whenAccepting } from "./docker";
import { DataLocation, formatDataLocation } from "./layout";
import { StepError } from "./step-error";
import { foreignDataError, hasServed, readTargetState, readTargetStateThrough } from "./target";

export interface PreflightInput {
    /** The old cluster's container. */
    container: string;
    /** The new major, its image and data location. */
    targetMajor: number;
    targetImage: string;
    targetData: DataLocation;
    /** backupDir, to check free space for the dump. */
    backupDir?: string;
    /** The staging container prepare made (method pg_upgrade): its marker is read through it, quickly. */
    staging?: string;
}

export interface PreflightResult {
    sourceVersion: string;
    sourceMajor: number;
    databasesBytes: number;
    /** What the new data location holds now. */
    target: "empty" | "staging copy (will be redone)" | "served before a revert (will be set aside, kept)" | "prepared for pg_upgrade";
    /** The upgrade already switched to the new cluster: nothing is left to check. */
    alreadyUpgraded: boolean;
    /** Roles whose password is an md5 hash: they cannot log in through the new cluster's scram-sha-256 rule. */
    md5Roles: string[];
}

/** The new cluster holds the restored databases plus the WAL and temporary files of the load. */
const NEW_CLUSTER_MARGIN = 1.2;

/**
 * Free space for the dump (backupDir) and for the new cluster (Docker's data root for a volume, the host folder's
 * file system otherwise), each against the databases' size; summed when both are on one file system. Also asked
 * by pg_upgrade's prepare before its standby copy, which is written while Synapse still serves.
 */
export async function checkSpace(input: Pick<PreflightInput, "targetData" | "backupDir">, databasesBytes: number): Promise<void> {
    const newDir = input.targetData.kind === "volume"
        ? (await run("docker", ["info", "--format", "{{.DockerRootDir}}"])).stdout.trim()
        : await nearestExisting(input.targetData.path);
    const newNeed = Math.ceil(databasesBytes * NEW_CLUSTER_MARGIN);
    const newFs = await fs.stat(newDir);
    let backupNeed = 0;
    if (input.backupDir) {
        await checkBackupSpace(input.backupDir, databasesBytes);
        if ((await fs.stat(input.backupDir)).dev === newFs.dev) backupNeed = databasesBytes;
    }
    const free = await freeBytes(newDir);
    if (free < newNeed + backupNeed) {
        const both = backupNeed ? ` plus ${formatBytes(backupNeed)} for the dump on the same disk` : "";
        throw new StepError(
            `The new cluster's data location ${formatDataLocation(input.targetData)} (on the file system of ${newDir}) has ${formatBytes(free)} free but needs about ${formatBytes(newNeed)}${both}; free ${formatBytes(newNeed + backupNeed - free)} there or choose another postgres:dataRoot.`,
        );
    }
}

async function nearestExisting(dir: string): Promise<string> {
    for (let d = dir; ; d = path.dirname(d)) {
        if (await fs.stat(d).then(() => true, () => false)) return d;
        if (d === path.dirname(d)) return d;
    }
}

/** Current Synapse releases refuse PostgreSQL older than 14. */
export const MIN_SYNAPSE_MAJOR = 14;

export async function preflight(input: PreflightInput): Promise<PreflightResult> {
    if (input.targetMajor < MIN_SYNAPSE_MAJOR) {
        throw new StepError(`PostgreSQL ${input.targetMajor} is older than current Synapse supports (${MIN_SYNAPSE_MAJOR} or newer); choose a newer target.`);
    }
    const [old, staging] = await Promise.all([requireContainer(input.container, "old"), input.staging ? inspectContainer(input.staging) : undefined]);
    const user = superuserOf(old);
    // Side by side: the new location's marker, and (when it runs) what the old server says.
    const [target, facts] = await Promise.all([
        staging?.labels["synapse-postgres.role"] === "staging"
            ? readTargetStateThrough(staging.name, input.targetMajor)
            : readTargetState(input.targetData, input.targetMajor, input.targetImage),
        old.running ? whenAccepting(input.container, user, () => oldServerFacts(input.container, user)) : undefined,
    ]);
    if (!facts) {
        if (target.marker && hasServed(target.marker)) {
            return { sourceVersion: "", sourceMajor: 0, databasesBytes: 0, target: "served before a revert (will be set aside, kept)", alreadyUpgraded: true, md5Roles: [] };
        }
        throw new StepError(`The old container "${input.container}" is not running; start it so it can be checked and dumped.`);
    }
    const { version, clients, databasesBytes, md5Roles } = facts;
    if (version.major >= input.targetMajor) {
        throw new StepError(`"${input.container}" runs PostgreSQL ${version.text}, not older than the target ${input.targetMajor}: this is a downgrade, which a dump cannot do safely; to go back, revert to the earlier stack config instead.`);
    }

    // Any other client could write after the dump and lose those writes at the switch: Synapse must be stopped.
    if (clients.length > 0) {
        const who = clients.map(([app, addr, db]) => `${app} from ${addr} on ${db}`).join(", ");
        throw new StepError(`${clients.length} client(s) are still connected to "${input.container}" (${who}); stop Synapse and its workers first, or anything they write after the dump would be lost.`);
    }
    await checkSpace(input, databasesBytes);

    let state: PreflightResult["target"] = "empty";
    if (target.marker) {
        state = hasServed(target.marker) ? "served before a revert (will be set aside, kept)"
            : target.marker.state === "prepared" ? "prepared for pg_upgrade" : "staging copy (will be redone)";
    } else if (!target.isEmpty) {
        throw foreignDataError(input.targetData, target);
    }
    return { sourceVersion: version.text, sourceMajor: version.major, databasesBytes, target: state, alreadyUpgraded: false, md5Roles };
}

/**
 * Everything preflight asks the old server, in one psql (each docker exec is a tenth of a second of downtime):
 * its version, the other clients connected, the databases' size and the roles with md5 password hashes.
 */
async function oldServerFacts(container: string, user: string) {
    const [[versionNum, versionText, clientsJson, bytes, md5Json]] = await query(container, user,
        `SELECT current_setting('server_version_num'), current_setting('server_version'),
                (SELECT coalesce(json_agg(json_build_array(coalesce(nullif(application_name, ''), 'unnamed client'), coalesce(host(client_addr), 'local socket'), datname) ORDER BY application_name), '[]')
                   FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()),
                (SELECT sum(pg_database_size(datname))::bigint FROM pg_database),
                (SELECT coalesce(json_agg(rolname ORDER BY rolname), '[]') FROM pg_authid WHERE rolpassword LIKE 'md5%')`);
    return {
        version: { text: versionText, major: Math.floor(Number(versionNum) / 10000) },
        clients: JSON.parse(clientsJson) as string[][],
        databasesBytes: Number(bytes),
        md5Roles: JSON.parse(md5Json) as string[],
    };
}
